"""API keys and TLS against a `taskwire-api` and a `taskwire-watch` run with
``--auth keys`` (not `taskwire dev`, which has no auth): the client's ``token`` (and
``TASKWIRE_TOKEN``) on unary calls and watch streams, tenants and roles as the client
sees them (UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND), and ``ca`` (and
``TASKWIRE_CA``) against a second api serving TLS with a certificate of a CA the test
makes with openssl.

The module's fixture starts its own nats-server, the services and, when openssl is
there, the TLS api, on free loopback ports with a temp dir, and stops every process it
started (by its Popen: SIGINT, then SIGKILL past a deadline). Binaries: TASKWIRE_BIN's
directory (default <repo>/target/debug) for taskwire-api and taskwire-watch.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import grpc
import pytest

from conftest import NATS_SERVER, TASKWIRE_BIN, Procs, _tail, free_port
from helpers import SERVER_EXT, clean_env, make_certificates, start_nats_server
from taskwire import AsyncClient, Client, TaskwireError, TaskwireWarning
from taskwire.client import _call_metadata, state_name
from taskwire.v1 import task_pb2

BIN_DIR = TASKWIRE_BIN.parent
API_BIN = BIN_DIR / "taskwire-api"
WATCH_BIN = BIN_DIR / "taskwire-watch"
TOKEN_RE = re.compile(r"^twk_[0-9a-f]{16}_[0-9a-f]{64}$")
KIND = "demo.echo"  # no worker runs here: submitted tasks stay QUEUED


@dataclass
class AuthStack:
    api: str  # host:port, plaintext, TaskService
    watch: str  # host:port, plaintext, WatchService
    token_a: str  # tenant a, submitter
    token_b: str  # tenant b, reader
    tls_api: Optional[str] = None  # host:port, TLS (None without openssl)
    ca: Optional[Path] = None  # PEM of the CA that signed tls_api's certificate
    logs: dict[str, Path] = field(default_factory=dict)

    def tail(self, name: str) -> str:
        return _tail(self.logs[name])


def _make_ca_and_cert(d: Path) -> Optional[tuple[Path, Path, Path]]:
    """(ca.pem, server.pem, server.key) for 127.0.0.1, or None without openssl."""
    if not make_certificates(d, "taskwire test CA", {"server": ("127.0.0.1", SERVER_EXT)}):
        return None
    return d / "ca.pem", d / "server.pem", d / "server.key"


def _create_key(db_url: str, tenant: str, role: str, env: dict[str, str]) -> str:
    cmd = [str(TASKWIRE_BIN), "keys", "create", "--name", f"pytest-{tenant}", "--tenant", tenant,
           "--role", role, "--database-url", db_url]
    r = subprocess.run(cmd, capture_output=True, timeout=30, env=env)
    assert r.returncode == 0, f"{' '.join(cmd)} exited {r.returncode}:\n{r.stderr.decode(errors='replace')}"
    token = r.stdout.decode().strip()
    assert TOKEN_RE.match(token), f"unexpected token format on stdout ({len(token)} chars)"
    return token


@pytest.fixture(scope="module")
def auth_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthStack]:
    for b in (NATS_SERVER, API_BIN, WATCH_BIN, TASKWIRE_BIN):
        if not b.exists():
            pytest.fail(f"{b} not found (build it, or run scripts/setup for nats-server)")
    d = tmp_path_factory.mktemp("auth")
    # Nothing of the caller's TASKWIRE_* settings (a token, an --auth) leaks in.
    env = clean_env()
    procs = Procs()
    try:
        # Task inputs up to 1 MiB need more than NATS's default max_payload (the api
        # refuses to start otherwise), as `taskwire dev` configures it.
        nats_url, nats_log = start_nats_server(procs, d, "max_payload: 8MB\n", env)
        common = [
            "--admin-listen", "off",
            "--nats-url", nats_url,
            "--database-url", f"sqlite://{d / 't.db'}",
            "--auth", "keys",
        ]
        stack_logs: dict[str, Path] = {"nats": nats_log}

        api = f"127.0.0.1:{free_port()}"
        stack_logs["api"] = d / "api.log"
        procs.start_ready("taskwire-api", [str(API_BIN), "--listen", api, *common], stack_logs["api"], env,
                          b"api listening")

        watch = f"127.0.0.1:{free_port()}"
        stack_logs["watch"] = d / "watch.log"
        procs.start_ready("taskwire-watch", [str(WATCH_BIN), "--listen", watch, *common], stack_logs["watch"], env,
                          b"watch listening")

        tls_api: Optional[str] = None
        ca: Optional[Path] = None
        made = _make_ca_and_cert(d)
        if made is not None:
            ca, cert, key = made
            tls_api = f"127.0.0.1:{free_port()}"
            stack_logs["tls-api"] = d / "tls-api.log"
            procs.start_ready(
                "taskwire-api (TLS)",
                [str(API_BIN), "--listen", tls_api, "--tls-cert", str(cert), "--tls-key", str(key), *common],
                stack_logs["tls-api"], env, b"api listening",
            )

        db_url = f"sqlite://{d / 't.db'}"
        stack = AuthStack(
            api=api,
            watch=watch,
            token_a=_create_key(db_url, "a", "submitter", env),
            token_b=_create_key(db_url, "b", "reader", env),
            tls_api=tls_api,
            ca=ca,
            logs=stack_logs,
        )
        yield stack
    finally:
        procs.stop_all()


@pytest.fixture(autouse=True)
def _no_ambient_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests set TASKWIRE_TOKEN / TASKWIRE_CA themselves when they want them."""
    monkeypatch.delenv("TASKWIRE_TOKEN", raising=False)
    monkeypatch.delenv("TASKWIRE_CA", raising=False)


def _code(fn) -> grpc.StatusCode:  # type: ignore[no-untyped-def]
    with pytest.raises(TaskwireError) as info:
        fn()
    return info.value.code


def _submit(c: Client, **labels: str) -> str:
    with warnings.catch_warnings():
        # No worker has ever served the kind here: the api warns; the task stays queued.
        warnings.simplefilter("ignore", TaskwireWarning)
        return c.submit(KIND, {"hello": "auth"}, labels=labels)


def _first_event(c: Client, task_id: str) -> task_pb2.TaskEvent:
    with c.watch(task_id, timeout=15) as w:
        return next(w)


def test_auth_no_or_unknown_token_is_unauthenticated(auth_stack: AuthStack) -> None:
    with Client(auth_stack.api, timeout=10) as c:
        assert _code(lambda: c.submit_task(KIND, {})) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(lambda: c.list()) == grpc.StatusCode.UNAUTHENTICATED
        err = pytest.raises(TaskwireError, c.status, str(uuid.uuid4())).value
        assert err.code == grpc.StatusCode.UNAUTHENTICATED and err.method == "TaskService/GetStatus"
    # Well-formed, but no such key.
    fake = "twk_" + "0" * 16 + "_" + "0" * 64
    with Client(auth_stack.api, timeout=10, token=fake) as c:
        assert _code(lambda: c.list()) == grpc.StatusCode.UNAUTHENTICATED
    # The streams too.
    with Client(auth_stack.watch, timeout=10) as w:
        assert _code(lambda: _first_event(w, str(uuid.uuid4()))) == grpc.StatusCode.UNAUTHENTICATED
        assert _code(lambda: next(iter(w.watch_tasks(kind=KIND, timeout=10)))) == grpc.StatusCode.UNAUTHENTICATED


def test_auth_tenant_submits_reads_and_watches_its_task(auth_stack: AuthStack) -> None:
    tag = uuid.uuid4().hex[:10]
    with Client(auth_stack.api, timeout=10, token=auth_stack.token_a) as a, \
            Client(auth_stack.watch, timeout=10, token=auth_stack.token_a) as aw:
        task_id = _submit(a, test=tag)
        task = a.status(task_id)
        assert task.id == task_id and task.kind == KIND
        assert state_name(task.state) == "QUEUED"
        assert [t.id for t in a.list(labels={"test": tag}).tasks] == [task_id]
        first = _first_event(aw, task_id)  # WatchTask: the snapshot of its current state
        assert first.task_id == task_id and state_name(first.state) == "QUEUED"
        # A submitter may not read the queues' statistics (admin only).
        assert _code(lambda: a.queue_stats()) == grpc.StatusCode.PERMISSION_DENIED


def test_auth_other_tenant_sees_not_found_and_reader_cannot_submit(auth_stack: AuthStack) -> None:
    tag = uuid.uuid4().hex[:10]
    with Client(auth_stack.api, timeout=10, token=auth_stack.token_a) as a:
        task_id = _submit(a, test=tag)
    with Client(auth_stack.api, timeout=10, token=auth_stack.token_b) as b, \
            Client(auth_stack.watch, timeout=10, token=auth_stack.token_b) as bw:
        assert _code(lambda: b.status(task_id)) == grpc.StatusCode.NOT_FOUND
        assert _code(lambda: _first_event(bw, task_id)) == grpc.StatusCode.NOT_FOUND
        assert list(b.list(labels={"test": tag}).tasks) == []
        assert _code(lambda: b.submit_task(KIND, {"from": "b"})) == grpc.StatusCode.PERMISSION_DENIED
        assert _code(lambda: b.cancel(task_id)) == grpc.StatusCode.PERMISSION_DENIED
    with Client(auth_stack.api, timeout=10, token=auth_stack.token_a) as a:
        assert state_name(a.status(task_id).state) == "QUEUED"  # untouched


def test_auth_watch_tasks_stream_carries_the_token(auth_stack: AuthStack) -> None:
    """WatchTasks with a's token sees a's events (a cancel's CANCELLED), b's does not."""
    kind = f"demo.auth{uuid.uuid4().hex[:8]}"
    seen: dict[str, list[task_pb2.TaskEvent]] = {"a": [], "b": []}
    errors: list[BaseException] = []
    clients = {
        "a": Client(auth_stack.watch, token=auth_stack.token_a),
        "b": Client(auth_stack.watch, token=auth_stack.token_b),
    }
    streams = {who: c.watch_tasks(kind=kind, timeout=30) for who, c in clients.items()}

    def consume(who: str) -> None:
        try:
            for ev in streams[who]:
                seen[who].append(ev)
        except TaskwireError as e:
            if e.code not in (grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED):
                errors.append(e)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=consume, args=(who,), daemon=True) for who in clients]
    for t in threads:
        t.start()
    try:
        with Client(auth_stack.api, timeout=10, token=auth_stack.token_a) as a:
            # A live stream only sees what happens after it subscribed: cancel one task
            # after another until a's stream has seen one (bounded).
            cancelled: list[str] = []
            deadline = time.monotonic() + 20
            while not seen["a"] and not errors and time.monotonic() < deadline:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", TaskwireWarning)
                    tid = a.submit(kind, {})
                a.cancel(tid)
                cancelled.append(tid)
                time.sleep(0.3)
            assert not errors, errors
            assert seen["a"], "tenant a's WatchTasks saw none of its cancels"
            assert {e.task_id for e in seen["a"]} <= set(cancelled)
            assert any(state_name(e.state) == "CANCELLED" for e in seen["a"])
            time.sleep(0.5)  # time for b's stream to (wrongly) get the same events
            assert seen["b"] == [], "tenant b's WatchTasks saw tenant a's tasks"
    finally:
        for c in clients.values():
            c.close()  # ends both streams
        for t in threads:
            t.join(timeout=10)
    assert not errors, errors


def test_auth_token_from_environment(auth_stack: AuthStack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKWIRE_TOKEN", auth_stack.token_a)
    with Client(auth_stack.api, timeout=10) as a, Client(auth_stack.watch, timeout=10) as aw:
        task_id = _submit(a)
        assert a.status(task_id).id == task_id
        assert _first_event(aw, task_id).task_id == task_id
    # An explicit token wins over the variable; token="" sends none.
    with Client(auth_stack.api, timeout=10, token=auth_stack.token_b) as b:
        assert _code(lambda: b.status(task_id)) == grpc.StatusCode.NOT_FOUND
    with Client(auth_stack.api, timeout=10, token="") as anon:
        assert _code(lambda: anon.status(task_id)) == grpc.StatusCode.UNAUTHENTICATED

    async def run_async() -> str:
        async with AsyncClient(auth_stack.api, timeout=10) as ac:
            return state_name((await ac.status(task_id)).state)

    assert asyncio.run(run_async()) == "QUEUED"


def test_tls_with_ca(auth_stack: AuthStack, monkeypatch: pytest.MonkeyPatch) -> None:
    if auth_stack.tls_api is None or auth_stack.ca is None:
        pytest.skip("openssl not found: no certificate to serve TLS with")
    https = f"https://{auth_stack.tls_api}"
    with Client(https, timeout=10, token=auth_stack.token_a, ca=str(auth_stack.ca)) as a:
        task_id = _submit(a)
        assert a.status(task_id).id == task_id
    # An explicit ca= makes a bare host:port TLS too.
    with Client(auth_stack.tls_api, timeout=10, token=auth_stack.token_a, ca=auth_stack.ca) as a:
        assert a.status(task_id).id == task_id
    # The system's roots do not know the test's CA.
    with Client(https, timeout=5, token=auth_stack.token_a) as untrusted:
        assert _code(lambda: untrusted.status(task_id)) == grpc.StatusCode.UNAVAILABLE
    # TASKWIRE_TOKEN and TASKWIRE_CA together, as the CLI reads them.
    monkeypatch.setenv("TASKWIRE_TOKEN", auth_stack.token_a)
    monkeypatch.setenv("TASKWIRE_CA", str(auth_stack.ca))
    with Client(https, timeout=10) as a:
        assert a.status(task_id).id == task_id
    # ...but TASKWIRE_CA never turns TLS on for a plaintext address.
    with Client(auth_stack.api, timeout=10) as plain:
        assert plain.status(task_id).id == task_id


def test_token_and_ca_arguments_are_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No server needed: the metadata every call sends, and what the constructor
    refuses (before it opens a channel)."""
    assert _call_metadata(None, ()) == ()  # neither token nor TASKWIRE_TOKEN: as before
    assert _call_metadata("twk_x", [("x-team", "search")]) == (
        ("x-team", "search"), ("authorization", "Bearer twk_x"),
    )
    monkeypatch.setenv("TASKWIRE_TOKEN", "twk_env\n")
    assert _call_metadata(None, ()) == (("authorization", "Bearer twk_env"),)
    assert _call_metadata("", ()) == ()  # token="" sends none
    # An authorization entry of the caller's own wins over the variable.
    assert _call_metadata(None, [("authorization", "Bearer mine")]) == (("authorization", "Bearer mine"),)
    with pytest.raises(ValueError, match="not both"):
        Client("127.0.0.1:1", token="t", metadata=[("authorization", "Bearer other")])
    with pytest.raises(ValueError, match="printable ASCII"):
        Client("127.0.0.1:1", token="Bearer twk_x")
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("hello")
    with pytest.raises(ValueError, match="not PEM"):
        Client("https://127.0.0.1:1", ca=str(not_pem))
    with pytest.raises(FileNotFoundError):
        Client("https://127.0.0.1:1", ca=str(tmp_path / "missing.pem"))
    monkeypatch.setenv("TASKWIRE_CA", str(tmp_path / "missing.pem"))
    with pytest.raises(FileNotFoundError, match="TASKWIRE_CA"):
        Client("https://127.0.0.1:1")
    with pytest.raises(ValueError, match="plaintext"):
        Client("http://127.0.0.1:1", ca=str(not_pem))
    with pytest.raises(ValueError, match="not both"):
        Client("https://127.0.0.1:1", ca=str(not_pem), credentials=grpc.ssl_channel_credentials())

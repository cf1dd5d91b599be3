"""The Python worker on a locked-down NATS: nats-server run with deploy/nats.conf and
deploy/nats-permissions.conf (one user per role, each confined to its subjects), the
api and recorder as their users, and an in-process :class:`taskwire.worker.Worker` as
the ``worker`` user serving ``demo.echo`` (one of the built-in kinds the permission
file names). A task submitted through the client succeeds with the Python handler's
output, cancel signals and running-requests reach the worker, and nats-server logs no
permission violation of the worker's user. Credentials: user and password (arguments
and TASKWIRE_NATS_USER/PASSWORD), an nkey seed file (a second user with the worker's
permissions), a wrong password or none (refused at once, clearly), a kind the file
does not name (a clear error), TLS with a CA and a client certificate (a second
nats-server that verifies clients; skipped without openssl), and a CA against a
server that does not require TLS (refused before any credentials are sent).

The fixtures start nats-server, taskwire-api and taskwire-recorder on free loopback
ports with a temp dir, and stop every process they started (by its Popen: SIGINT, then
SIGKILL past a deadline). Binaries: TASKWIRE_BIN's directory (default
<repo>/target/debug) for taskwire-api and taskwire-recorder.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import time
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import nats
import nkeys
import pytest

from conftest import NATS_SERVER, REPO, TASKWIRE_BIN, Procs, _tail, free_port
from helpers import (
    CLIENT_EXT,
    SERVER_EXT,
    async_final_status,
    clean_env,
    make_certificates,
    running,
    start_nats_server,
)
from taskwire import AsyncClient, TaskwireWarning
from taskwire.client import from_value, state_name
from taskwire.worker import INBOX_PREFIX, Stopped, TaskContext, Worker, kind_consumer

BIN_DIR = TASKWIRE_BIN.parent
API_BIN = BIN_DIR / "taskwire-api"
RECORDER_BIN = BIN_DIR / "taskwire-recorder"
DEPLOY = REPO / "deploy"
ROLES = ("api", "worker", "recorder", "watch")
KIND = "demo.echo"  # named by deploy/nats-permissions.conf; no Rust worker runs here
NATS_ENV = (
    "TASKWIRE_NATS_USER",
    "TASKWIRE_NATS_PASSWORD",
    "TASKWIRE_NATS_CREDS",
    "TASKWIRE_NATS_NKEY",
    "TASKWIRE_NATS_TLS_CA",
    "TASKWIRE_NATS_TLS_CERT",
    "TASKWIRE_NATS_TLS_KEY",
)


@dataclass
class LockedNats:
    """A nats-server with deploy/nats-permissions.conf, and the services on it."""

    nats_url: str
    api: str  # host:port of taskwire-api (plaintext gRPC)
    passwords: dict[str, str]  # role -> password
    nats_log: Path  # nats-server's own log (-l): permission violations land here
    nkey_seed: Path  # a file holding the seed of an nkey user with the worker's permissions
    logs: dict[str, Path] = field(default_factory=dict)

    def log_size(self) -> int:
        return self.nats_log.stat().st_size if self.nats_log.exists() else 0

    def violations(self, since: int = 0) -> list[str]:
        """nats-server's "Violation" lines logged from byte ``since`` on."""
        with open(self.nats_log, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
        return [line for line in text.splitlines() if "Violation" in line]


def _permissions_with_nkey_user(public_key: str) -> str:
    """deploy/nats-permissions.conf plus a user known by ``public_key`` with exactly the
    worker's permissions."""
    perms = (DEPLOY / "nats-permissions.conf").read_text()
    m = re.search(
        r"\n    \{\n      user: \"worker\"\n      password: \$TASKWIRE_NATS_WORKER_PASSWORD\n(.*?)\n    \}\n",
        perms,
        re.S,
    )
    assert m, "deploy/nats-permissions.conf has no worker user in the expected layout"
    entry = f'    {{\n      nkey: "{public_key}"\n{m.group(1)}\n    }}\n'
    end = perms.rindex("  ]\n}")
    return perms[:end] + entry + perms[end:]


def _role(role: str, passwords: dict[str, str]) -> list[str]:
    flags = ["--nats-user", role, "--nats-password", passwords[role]]
    if role != "api":
        flags += ["--nats-manage-streams", "false"]  # only the api may create streams
    return flags


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockedNats]:
    for b in (NATS_SERVER, API_BIN, RECORDER_BIN):
        if not b.exists():
            pytest.fail(f"{b} not found (build it, or run scripts/setup for nats-server)")
    d = tmp_path_factory.mktemp("nats-auth")
    env = clean_env()
    passwords = {role: secrets.token_hex(12) for role in ROLES}
    server_env = dict(env, **{f"TASKWIRE_NATS_{r.upper()}_PASSWORD": pw for r, pw in passwords.items()})
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    seed_file = d / "worker.nk"
    seed_file.write_bytes(seed + b"\n")
    seed_file.chmod(0o600)
    procs = Procs()
    try:
        conf = (DEPLOY / "nats.conf").read_text() + "\n" + _permissions_with_nkey_user(public)
        nats_url, nats_log = start_nats_server(procs, d, conf, server_env)
        db = f"sqlite://{d / 't.db'}"
        common = ["--admin-listen", "off", "--nats-url", nats_url, "--database-url", db]
        logs = {"nats": nats_log}

        api = f"127.0.0.1:{free_port()}"
        logs["api"] = d / "api.log"
        procs.start_ready("taskwire-api", [str(API_BIN), "--listen", api, *common, *_role("api", passwords)],
                          logs["api"], env, b"api listening")

        logs["recorder"] = d / "recorder.log"
        procs.start_ready("taskwire-recorder", [str(RECORDER_BIN), *common, *_role("recorder", passwords)],
                          logs["recorder"], env, b"recorder running")

        yield LockedNats(nats_url=nats_url, api=api, passwords=passwords, nats_log=nats_log,
                         nkey_seed=seed_file, logs=logs)
    finally:
        procs.stop_all()


@pytest.fixture(autouse=True)
def _no_ambient_nats_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tests set TASKWIRE_NATS_* themselves when they want them."""
    for name in NATS_ENV:
        monkeypatch.delenv(name, raising=False)


def _worker(url: str, **kw: Any) -> Worker:
    kw.setdefault("ack_wait", 5.0)
    kw.setdefault("shutdown_grace", 2.0)
    kw.setdefault("nats_timeout", 2.0)
    kw.setdefault("stream_wait", 15.0)
    return Worker(url, **kw)


def _echo_worker(url: str, **kw: Any) -> Worker:
    w = _worker(url, **kw)

    @w.handler(KIND)
    async def echo(ctx: TaskContext) -> Any:
        await ctx.progress(0.5, "in python")
        return {"echo": ctx.input, "by": "python", "attempt": ctx.attempt}

    return w


async def _submit(c: AsyncClient, input: Any) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TaskwireWarning)
        return await c.submit(KIND, input, max_attempts=2)


def _worker_violations(locked: LockedNats, since: int) -> list[str]:
    # nats-server names the user in each violation line (`user:worker`, or the nkey).
    public = nkeys.from_seed(bytearray(locked.nkey_seed.read_bytes().strip())).public_key.decode()
    return [line for line in locked.violations(since) if "worker" in line or public in line]


async def _run_echo_task(locked: LockedNats, worker: Worker) -> None:
    """Runs a demo.echo task through ``worker`` and checks it succeeded with the Python
    handler's output, with no permission violation of the worker's users meanwhile."""
    since = locked.log_size()
    tag = uuid.uuid4().hex
    async with running(worker), AsyncClient(locked.api, timeout=10) as c:
        task_id = await _submit(c, {"hello": tag})
        task = await async_final_status(c, task_id, timeout=30, every=0.1)
    assert state_name(task.state) == "SUCCEEDED", (task, _tail(locked.logs["nats"]))
    assert from_value(task.output) == {"echo": {"hello": tag}, "by": "python", "attempt": 1}
    assert task.progress.fraction == 1.0
    await asyncio.sleep(0.3)  # the server logs a violation as it refuses it
    assert _worker_violations(locked, since) == [], locked.violations(since)


async def test_confined_worker_runs_a_task_with_user_and_password(locked: LockedNats) -> None:
    await _run_echo_task(locked, _echo_worker(locked.nats_url, nats_user="worker",
                                              nats_password=locked.passwords["worker"]))
    assert locked.violations() == [], "no service strayed from its subjects"


async def test_confined_worker_gets_cancel_signals_and_running_requests(
    locked: LockedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Credentials from TASKWIRE_NATS_USER/PASSWORD; its `taskwire.cancel.*` and
    `taskwire.running.*` subscriptions are inside the worker's permissions."""
    monkeypatch.setenv("TASKWIRE_NATS_USER", "worker")
    monkeypatch.setenv("TASKWIRE_NATS_PASSWORD", locked.passwords["worker"])
    since = locked.log_size()
    started = asyncio.Event()
    cancelled = asyncio.Event()
    w = _worker(locked.nats_url)

    @w.handler(KIND)
    async def wait(ctx: TaskContext) -> Any:
        started.set()
        await ctx.wait_cancelled()
        cancelled.set()
        raise Stopped()

    async with running(w), AsyncClient(locked.api, timeout=10) as c:
        task_id = await _submit(c, {"wait": True})
        await asyncio.wait_for(started.wait(), timeout=20)
        # Another worker's question, "who runs this task?", as the worker's user.
        nc = await nats.connect(locked.nats_url, user="worker", password=locked.passwords["worker"],
                                inbox_prefix=INBOX_PREFIX, connect_timeout=5, max_reconnect_attempts=0)
        try:
            reply = await nc.request(f"taskwire.running.{task_id}", b"", timeout=3)
        finally:
            await nc.close()
        assert reply.data == b"1"
        await c.cancel(task_id)
        await asyncio.wait_for(cancelled.wait(), timeout=10)
        task = await async_final_status(c, task_id, timeout=30, every=0.1)
    assert state_name(task.state) == "CANCELLED"
    await asyncio.sleep(0.3)
    assert _worker_violations(locked, since) == [], locked.violations(since)


async def test_confined_worker_with_an_nkey_seed_file(locked: LockedNats, monkeypatch: pytest.MonkeyPatch) -> None:
    await _run_echo_task(locked, _echo_worker(locked.nats_url, nats_nkey=locked.nkey_seed))
    # The same from TASKWIRE_NATS_NKEY; a seed the server does not know is refused.
    other = locked.nkey_seed.with_name("unknown.nk")
    other.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    monkeypatch.setenv("TASKWIRE_NATS_NKEY", str(other))
    with pytest.raises(PermissionError, match=r"refused the worker's credentials \(nkey seed file .*unknown\.nk\)"):
        await _echo_worker(locked.nats_url).start()


async def test_wrong_password_or_none_is_refused_at_once(locked: LockedNats, monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = "not-" + locked.passwords["worker"]
    t0 = time.monotonic()
    w = _echo_worker(locked.nats_url, nats_user="worker", nats_password=wrong, stream_wait=60)
    with pytest.raises(PermissionError) as info:
        await w.start()
    msg = str(info.value)
    assert f"NATS at {locked.nats_url} refused the worker's credentials (user 'worker')" in msg
    assert "Authorization Violation" in msg
    assert wrong not in msg, "the password is not shown"
    assert time.monotonic() - t0 < 15, "refused at once, not after stream_wait"
    assert w._nc is None

    # The same from the environment, and with no credentials at all.
    monkeypatch.setenv("TASKWIRE_NATS_USER", "worker")
    monkeypatch.setenv("TASKWIRE_NATS_PASSWORD", wrong)
    with pytest.raises(PermissionError, match=r"\(user 'worker'\).*Authorization Violation"):
        await _echo_worker(locked.nats_url, stream_wait=60).start()
    with pytest.raises(PermissionError, match=r"\(no credentials\).*Authorization Violation"):
        await _echo_worker(locked.nats_url, nats_user="", nats_password="", stream_wait=60).start()
    # An explicit argument wins over its variable.
    w = _echo_worker(locked.nats_url, nats_password=locked.passwords["worker"])
    await w.start()
    await w.close()


async def test_a_kind_the_permissions_do_not_name_fails_clearly(locked: LockedNats) -> None:
    since = locked.log_size()
    w = _worker(locked.nats_url, nats_user="worker", nats_password=locked.passwords["worker"], nats_timeout=1.0)

    @w.handler("py.unlisted")
    async def unlisted(ctx: TaskContext) -> Any:
        return None

    with pytest.raises(RuntimeError, match=r"nats-permissions --kind py\.unlisted"):
        await w.start()
    assert w._nc is None
    await asyncio.sleep(0.3)
    # Refused by the server: the consumer's creation, and nothing else.
    refused = _worker_violations(locked, since)
    assert refused and all(kind_consumer("py.unlisted") in line for line in refused), refused


async def test_a_tls_ca_is_refused_by_a_server_without_tls(locked: LockedNats, tmp_path: Path) -> None:
    pki = _make_pki(tmp_path)
    w = _echo_worker(locked.nats_url, nats_user="worker", nats_password="never-sent",
                     nats_tls_ca=pki.ca, stream_wait=60)
    since = locked.log_size()
    with pytest.raises(ConnectionError, match="does not require TLS"):
        await w.start()
    # No connection was attempted with the credentials: no authentication error logged.
    assert "authentication error" not in locked.nats_log.read_bytes()[since:].decode(errors="replace")


def test_connection_options_are_checked_when_the_worker_is_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = "nats://127.0.0.1:1"
    with pytest.raises(ValueError, match="needs its password"):
        Worker(url, nats_user="worker")
    with pytest.raises(ValueError, match=r"needs its user \(nats_user= or \$TASKWIRE_NATS_USER\)"):
        Worker(url, nats_password="pw")
    monkeypatch.setenv("TASKWIRE_NATS_USER", "worker")
    with pytest.raises(ValueError, match=r"a NATS user \(\$TASKWIRE_NATS_USER\) needs its password"):
        Worker(url)
    Worker(url, nats_user="")  # "" = none, whatever the variable says
    monkeypatch.delenv("TASKWIRE_NATS_USER")

    seed = tmp_path / "seed.nk"
    seed.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    creds = tmp_path / "user.creds"
    creds.write_text("not checked until connecting\n")
    with pytest.raises(ValueError, match="not both"):
        Worker(url, nats_creds=creds, nats_nkey=seed)
    with pytest.raises(FileNotFoundError, match=r"NATS nkey seed file .*missing\.nk.*nats_nkey="):
        Worker(url, nats_nkey=tmp_path / "missing.nk")
    monkeypatch.setenv("TASKWIRE_NATS_CREDS", str(tmp_path / "missing.creds"))
    with pytest.raises(FileNotFoundError, match=r"missing\.creds.*\$TASKWIRE_NATS_CREDS"):
        Worker(url)
    monkeypatch.delenv("TASKWIRE_NATS_CREDS")
    bad = tmp_path / "bad.nk"
    bad.write_text("SUNOTASEED\n")
    with pytest.raises(ValueError, match="holds no valid nkey seed"):
        Worker(url, nats_nkey=bad)

    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    with pytest.raises(ValueError, match="needs its key"):
        Worker(url, nats_tls_cert=not_pem)
    with pytest.raises(ValueError, match="not a PEM certificate"):
        Worker(url, nats_tls_ca=not_pem)
    monkeypatch.setenv("TASKWIRE_NATS_TLS_CA", str(tmp_path / "missing-ca.pem"))
    with pytest.raises(FileNotFoundError, match=r"NATS TLS CA .*\$TASKWIRE_NATS_TLS_CA"):
        Worker(url)


# -- TLS --------------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _make_pki(d: Path) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate it signed
    (openssl; the test is skipped without it)."""
    leaves = {"server": ("server", SERVER_EXT), "client": ("client", CLIENT_EXT)}
    if not make_certificates(d, "taskwire test NATS CA", leaves):
        pytest.skip("openssl not found")
    return Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key")


@dataclass
class TlsNats:
    nats_url: str
    passwords: dict[str, str]
    pki: Pki


@pytest.fixture(scope="module")
def tls_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsNats]:
    """nats-server with the permissions and TLS that verifies clients, and an api (to
    create the streams) reaching it with the CA and the client certificate."""
    d = tmp_path_factory.mktemp("nats-tls")
    pki = _make_pki(d)
    env = clean_env()
    passwords = {role: secrets.token_hex(12) for role in ROLES}
    server_env = dict(env, **{f"TASKWIRE_NATS_{r.upper()}_PASSWORD": pw for r, pw in passwords.items()})
    tls = (
        f'tls {{\n  cert_file: "{pki.server_cert}"\n  key_file: "{pki.server_key}"\n'
        f'  ca_file: "{pki.ca}"\n  verify: true\n}}\n'
    )
    conf = (DEPLOY / "nats.conf").read_text() + "\n" + tls + (DEPLOY / "nats-permissions.conf").read_text()
    procs = Procs()
    try:
        nats_url, _ = start_nats_server(procs, d, conf, server_env)
        procs.start_ready(
            "taskwire-api (NATS over TLS)",
            [str(API_BIN), "--listen", f"127.0.0.1:{free_port()}", "--admin-listen", "off",
             "--nats-url", nats_url, "--database-url", f"sqlite://{d / 't.db'}", *_role("api", passwords),
             "--nats-tls-ca", str(pki.ca), "--nats-tls-cert", str(pki.client_cert),
             "--nats-tls-key", str(pki.client_key)],
            d / "api.log", env, b"api listening",
        )
        yield TlsNats(nats_url, passwords, pki)
    finally:
        procs.stop_all()


async def test_worker_reaches_nats_over_tls_with_a_client_certificate(
    tls_nats: TlsNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = tls_nats.pki
    creds = {"nats_user": "worker", "nats_password": tls_nats.passwords["worker"]}
    w = _echo_worker(tls_nats.nats_url, nats_tls_ca=pki.ca, nats_tls_cert=pki.client_cert,
                     nats_tls_key=pki.client_key, **creds)
    await w.start()  # TLS, the streams' info, the kind's consumer, its pull subscription
    try:
        assert w._nc is not None and w._nc.is_connected
    finally:
        await w.close()

    # The same from the environment.
    monkeypatch.setenv("TASKWIRE_NATS_TLS_CA", str(pki.ca))
    monkeypatch.setenv("TASKWIRE_NATS_TLS_CERT", str(pki.client_cert))
    monkeypatch.setenv("TASKWIRE_NATS_TLS_KEY", str(pki.client_key))
    w = _echo_worker(tls_nats.nats_url, **creds)
    await w.start()
    await w.close()

    # Without the CA (the system's roots), the server's certificate is not trusted.
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match="TLS with NATS at .* failed"):
        await _echo_worker(tls_nats.nats_url, nats_tls_ca="", stream_wait=60, **creds).start()
    assert time.monotonic() - t0 < 15, "refused at once, not after stream_wait"

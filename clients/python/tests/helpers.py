"""Small helpers shared by the tests."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Optional, TypeVar

import nats
import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from conftest import NATS_SERVER, Procs, free_port
from taskwire import AsyncClient, TaskwireError
from taskwire.client import Client, is_terminal, state_name
from taskwire.v1 import task_pb2
from taskwire.worker import TaskContext, Worker

T = TypeVar("T")


def eventually(fn: Callable[[], T], ok: Callable[[T], bool], timeout: float = 10.0, every: float = 0.05) -> T:
    """Calls fn until ok(result) or the timeout; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(every)


async def async_eventually(
    fn: Callable[[], Awaitable[T]], ok: Callable[[T], bool], timeout: float = 10.0, every: float = 0.1
) -> T:
    """``eventually`` for coroutines: awaits fn until ok(result) or the timeout; returns
    the last result (the caller asserts on it). Every 0.1 s by default: an in-process
    Worker often shares the event loop with the polling."""
    deadline = time.monotonic() + timeout
    while True:
        value = await fn()
        if ok(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(every)


def final_status(client: Client, task_id: str, timeout: float = 10.0) -> task_pb2.Task:
    """The task's record once the recorder has applied its terminal event (the watch
    reads NATS, GetStatus the database, which the recorder updates a moment later)."""
    return eventually(lambda: client.status(task_id), lambda t: is_terminal(t.state), timeout)


async def async_final_status(
    client: AsyncClient, task_id: str, timeout: float = 10.0, every: float = 0.05
) -> task_pb2.Task:
    """``final_status`` for an AsyncClient: the record once it is terminal (or, past
    the timeout, as it is: the caller's assertion on its state then fails)."""

    async def status() -> task_pb2.Task:
        return await client.status(task_id)

    return await async_eventually(status, lambda t: is_terminal(t.state), timeout, every)


def history(client: Client, task_id: str, timeout: float = 30.0) -> list[task_pb2.TaskEvent]:
    """Every stored event of a finished task, oldest first: a watch from after_seq = 1
    (after_seq = 0 would start with a snapshot instead). Only the first event stored
    on a server can have seq 1: the dev fixtures run a warm-up task first."""
    events = list(client.watch(task_id, after_seq=1, timeout=timeout))
    # A history starts with RUNNING (a worker's claim) or CANCELLED (the api).
    assert events and states(events[:1])[0] in ("RUNNING", "CANCELLED"), states(events)
    return events


def states(events: Iterable[task_pb2.TaskEvent]) -> list[str]:
    return [state_name(e.state) for e in events]


def assert_strictly_increasing(seqs: list[int]) -> None:
    assert all(a < b for a, b in zip(seqs, seqs[1:])), f"seqs not strictly increasing: {seqs}"


def collect_in_thread(
    stream: Iterable[T],
    got: list[T],
    until: Callable[[T], bool] = lambda _: False,
    errors: Optional[list[TaskwireError]] = None,
) -> threading.Thread:
    """Starts (and returns) a daemon thread that appends each item of ``stream`` (a
    live WatchTasks feed) to ``got`` until ``until(item)`` or the stream ends. A
    TaskwireError that ends the stream goes to ``errors`` when given (the caller
    decides what it means), else is raised in the thread. Live feeds hear only what
    comes after they subscribe, so the tests read them beside the code that submits."""

    def consume() -> None:
        try:
            for item in stream:
                got.append(item)
                if until(item):
                    return
        except TaskwireError as e:
            if errors is None:
                raise
            errors.append(e)

    thread = threading.Thread(target=consume, daemon=True)
    thread.start()
    return thread


# -- NATS and in-process workers ----------------------------------------------------


@contextlib.asynccontextmanager
async def nats_connection(nats_url: str) -> AsyncIterator[NATS]:
    """A nats-py connection to a test server (e.g. dev's ``nats_url``), closed when the
    block ends: the same connect options everywhere a test reads NATS itself."""
    nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=2)
    try:
        yield nc
    finally:
        await nc.close()


async def stored_messages(jsm: Any, stream: str, subject: str) -> list[Any]:
    """Every message stored on ``subject`` in ``stream``, oldest first (message gets of
    the next message on the subject from a seq): a task's events or dead letters as
    JetStream holds them, without a consumer."""
    out: list[Any] = []
    seq = 1
    while True:
        try:
            raw = await jsm.get_msg(stream, seq, subject=subject, next=True)
        except nats.js.errors.NotFoundError:
            return out
        out.append(raw)
        seq = int(raw.seq) + 1


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    """``worker`` started and pulling (no signal handlers: pytest owns them) until the
    block ends, then shut down and waited for (bounded), also when the test fails."""
    await worker.start()
    run = asyncio.create_task(worker.run(install_signal_handlers=False))
    try:
        yield worker
    finally:
        worker.shutdown()
        await asyncio.wait_for(run, timeout=30)


@contextlib.asynccontextmanager
async def running_worker(
    nats_url: str,
    kind: str,
    handler: Callable[[TaskContext], Awaitable[Any]],
    *,
    ack_wait: float = 5.0,
    shutdown_grace: float = 2.0,
    **kw: Any,
) -> AsyncIterator[Worker]:
    """A Worker serving ``kind`` with ``handler`` on the NATS at ``nats_url``, pulling
    until the block ends. Short backoffs and stream wait, so a test's retries and
    start-up stay quick; ``kw`` goes to Worker (max_running=, max_rate=, ...)."""
    worker = Worker(
        nats_url,
        ack_wait=ack_wait,
        backoff_base=0.2,
        backoff_max=1,
        shutdown_grace=shutdown_grace,
        stream_wait=15,
        **kw,
    )
    worker.register(kind, handler)
    async with running(worker):
        yield worker


# -- processes of the stand-alone stacks (test_auth, test_worker_nats_auth) ----------


def clean_env() -> dict[str, str]:
    """The caller's environment without any TASKWIRE_* setting (no token, --auth or
    NATS credential of the caller's leaks into a service the test starts), and no
    colour in the services' logs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKWIRE_")}
    env["NO_COLOR"] = "1"
    return env


def start_nats_server(procs: Procs, d: Path, conf_text: str, env: Mapping[str, str]) -> tuple[str, Path]:
    """nats-server with JetStream (store under ``d``) and ``conf_text`` as its config, on
    a free port of 127.0.0.1, started through ``procs`` (so stopped with the rest) and
    waited for; its own log (-l) is a file of its own, where permission violations
    land. Returns (its URL, that log)."""
    conf = d / "nats.conf"
    conf.write_text(conf_text)
    port = free_port()
    nats_log = d / "nats.log"
    procs.start_ready(
        "nats-server",
        [str(NATS_SERVER), "-c", str(conf), "-a", "127.0.0.1", "-p", str(port),
         "-js", "-sd", str(d / "js"), "-l", str(nats_log)],
        d / "nats.out", dict(env), b"Server is ready", watch=nats_log,
    )
    return f"nats://127.0.0.1:{port}", nats_log


SERVER_EXT = (
    "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
)
CLIENT_EXT = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"


def make_certificates(d: Path, ca_name: str, leaves: Mapping[str, tuple[str, str]]) -> bool:
    """With openssl, in ``d``: a CA (``ca.pem``, ``ca.key``) named ``ca_name``, and for
    each ``name -> (common name, extensions)`` of ``leaves`` a certificate it signed
    (``name.pem``, ``name.key``; SERVER_EXT or CLIENT_EXT). False, with nothing made,
    without openssl (each caller decides whether to skip); an openssl failure fails
    the test."""
    openssl = shutil.which("openssl")
    if openssl is None:
        return False
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    steps = [
        [openssl, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
         "-subj", f"/CN={ca_name}",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
    ]
    for name, (common_name, ext) in leaves.items():
        (d / f"{name}.ext").write_text(ext)
        steps += [
            [openssl, "req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={common_name}"],
            [openssl, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext"],
        ]
    for cmd in steps:
        r = subprocess.run(cmd, cwd=d, capture_output=True, timeout=30)
        if r.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed:\n{r.stderr.decode(errors='replace')}")
    return True

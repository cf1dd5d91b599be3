"""Fixtures: a live `taskwire dev` on free loopback ports with a temp data dir, a
client for it, and the example Python worker joined to its NATS; and a second pair
whose dev exports spans (tracing on) to an OTLP sink of the test's own.

Binaries: env TASKWIRE_BIN (default <repo>/target/debug/taskwire), TASKWIRE_NATS_SERVER
(default <repo>/.venv/bin/nats-server), GRPCURL (default <repo>/.venv/bin/grpcurl).
Every process a fixture starts is stopped (SIGINT, then wait; SIGKILL only past a
deadline), also when a test fails.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Optional

import pytest

HERE = Path(__file__).resolve().parent
PY_ROOT = HERE.parent  # clients/python
REPO = PY_ROOT.parent.parent
TASKWIRE_BIN = Path(os.environ.get("TASKWIRE_BIN", REPO / "target" / "debug" / "taskwire"))
NATS_SERVER = Path(os.environ.get("TASKWIRE_NATS_SERVER", REPO / ".venv" / "bin" / "nats-server"))
GRPCURL = Path(os.environ.get("GRPCURL", REPO / ".venv" / "bin" / "grpcurl"))

if str(PY_ROOT) not in sys.path:
    sys.path.insert(0, str(PY_ROOT))

from taskwire import Client  # noqa: E402


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True
    return True


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(proc: subprocess.Popen, timeout: float) -> Optional[int]:
    """SIGINT, wait up to `timeout`, then SIGKILL; returns the exit code (None if it
    had to be killed)."""
    if proc.poll() is not None:
        return proc.returncode
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
        return None


class Procs:
    """Processes a fixture started (each with its own log), stopped newest first."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, cmd: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=log_path.parent)
        self.procs.append((name, proc, log_path))
        return proc

    def start_ready(
        self,
        name: str,
        cmd: list[str],
        log_path: Path,
        env: dict[str, str],
        ready: bytes,
        watch: Optional[Path] = None,
    ) -> subprocess.Popen:
        """``start``, then ``wait_for_log`` until ``ready`` is logged: every service a
        stack starts is used only once it says it serves (or the test fails, naming it)."""
        proc = self.start(name, cmd, log_path, env)
        wait_for_log(proc, log_path, ready, name, watch=watch)
        return proc

    def stop_all(self) -> None:
        for name, proc, log_path in reversed(self.procs):
            code = stop_process(proc, 15)
            print(f"--- {name} (exit {code}) log, last lines ---\n{_tail(log_path, 15)}")
        self.procs.clear()


def wait_for_log(
    proc: subprocess.Popen,
    log_path: Path,
    needle: bytes,
    what: str,
    timeout: float = 30.0,
    watch: Optional[Path] = None,
) -> None:
    """Waits until ``needle`` is in ``watch`` (default: the process's log); fails the
    test if the process exits first or it takes longer than ``timeout``."""
    watch = watch or log_path

    def logs() -> str:
        return _tail(log_path) if watch == log_path else f"{_tail(log_path)}\n{_tail(watch)}"

    deadline = time.monotonic() + timeout
    while not (watch.exists() and needle in watch.read_bytes()):
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{logs()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready within {timeout}s:\n{logs()}")
        time.sleep(0.05)


class Dev:
    """One `taskwire dev` process; restartable on the same data dir and address."""

    def __init__(self, data_dir: Path, env: Optional[Mapping[str, str]] = None) -> None:
        self.data_dir = data_dir
        self.env = dict(env or {})
        self.port = free_port()
        self.web_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.proc: Optional[subprocess.Popen] = None
        self.runs = 0
        self.log_path = data_dir.parent / "dev-0.log"

    @property
    def nats_url(self) -> str:
        return (self.data_dir / "nats-url").read_text().strip()

    def start(self, timeout: float = 30.0) -> None:
        if not TASKWIRE_BIN.exists():
            pytest.fail(f"{TASKWIRE_BIN} not found: build it (cargo build) or set TASKWIRE_BIN")
        self.log_path = self.data_dir.parent / f"dev-{self.runs}.log"
        self.runs += 1
        log = open(self.log_path, "wb")
        cmd = [
            str(TASKWIRE_BIN), "dev",
            "--listen", self.address,
            "--web-listen", f"127.0.0.1:{self.web_port}",
            "--admin-listen", "127.0.0.1:0",
            "--data-dir", str(self.data_dir),
            "--nats-server", str(NATS_SERVER),
        ]
        # cwd = the data dir's parent, so nothing of the checkout's .taskwire is used.
        env = dict(os.environ, **self.env) if self.env else None
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.data_dir.parent, env=env)
        log.close()
        try:
            wait_for_log(self.proc, self.log_path, b"taskwire dev: serving gRPC", "taskwire dev", timeout)
        except BaseException:  # pytest.fail's Failed included: stop what did not come up
            self.stop()
            raise

    def stop(self, timeout: float = 25.0) -> None:
        proc, self.proc = self.proc, None
        code = stop_process(proc, timeout) if proc is not None else None
        if code is None:
            # Killed: its nats-server is orphaned. Stop it (it is ours: the pid file in
            # our data dir names it) so the next start or the temp dir cleanup is clean.
            pid_file = self.data_dir / "nats-server.pid"
            try:
                pid = int(pid_file.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"nats-server" in cmdline and str(self.data_dir).encode() in cmdline:
                    os.kill(pid, signal.SIGKILL)
                    for _ in range(100):
                        if not _alive(pid):
                            break
                        time.sleep(0.05)
            except (OSError, ValueError):
                pass
            if proc is not None:
                print(f"taskwire dev did not stop within {timeout}s of SIGINT; killed it:\n{_tail(self.log_path)}")

    def kill(self) -> None:
        """SIGKILL, as a crash: connections drop without GOAWAY, and its nats-server is
        orphaned (the next start stops it, through the pid file in the data dir)."""
        proc, self.proc = self.proc, None
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def tail(self) -> str:
        return _tail(self.log_path)


@pytest.fixture(scope="session")
def run_id() -> str:
    """A label value unique to this test run (ListTasks filters)."""
    return uuid.uuid4().hex[:12]


def _dev(
    tmp_path_factory: pytest.TempPathFactory, name: str, env: Optional[Mapping[str, str]] = None
) -> Iterator[Dev]:
    base = tmp_path_factory.mktemp(name)
    dev = Dev(base / "data", env)
    dev.start()
    try:
        # A warm-up task: proves the system runs, and takes seq 1, so that every later
        # task's whole history can be read with after_seq = 1 (helpers.history).
        with Client(dev.address, timeout=15) as c:
            warm = c.submit("demo.echo", "warm-up")
            assert [e.seq for e in c.watch(warm, timeout=30)][-1] >= 1
        yield dev
    finally:
        dev.stop()
        print(f"--- {name} log (last lines) ---\n{dev.tail()}")


@pytest.fixture(scope="session")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    """A `taskwire dev` shared by the tests that do not restart it."""
    yield from _dev(tmp_path_factory, "dev")


@pytest.fixture
def own_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    """A `taskwire dev` of the test's own, which it may restart."""
    yield from _dev(tmp_path_factory, "own-dev")


@pytest.fixture
def client(dev: Dev) -> Iterator[Client]:
    c = Client(dev.address, timeout=15)
    try:
        yield c
    finally:
        c.close()


class PyWorker:
    def __init__(self, proc: subprocess.Popen, log_path: Path) -> None:
        self.proc = proc
        self.log_path = log_path

    def tail(self) -> str:
        return _tail(self.log_path)


WORKER_ACK_WAIT = 5.0


@contextlib.contextmanager
def _py_worker(dev: Dev, log_path: Path) -> Iterator[PyWorker]:
    """examples/reverse_worker.py (py.reverse, py.fail) as a subprocess on dev's NATS."""
    env = dict(os.environ, PYTHONPATH=str(PY_ROOT), PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable, str(PY_ROOT / "examples" / "reverse_worker.py"),
        "--nats-url", dev.nats_url,
        "--ack-wait", str(WORKER_ACK_WAIT),
        "--backoff-base", "0.2",
        "--backoff-max", "1",
        "--shutdown-grace", "2",
        "--concurrency", "4",
    ]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    worker = PyWorker(proc, log_path)
    try:
        wait_for_log(proc, log_path, b"worker connected", "the Python worker", 30)
        yield worker
    finally:
        code = stop_process(proc, 20)
        print(f"--- Python worker log (exit {code}) ---\n{worker.tail()}")


@pytest.fixture(scope="session")
def py_worker(dev: Dev, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PyWorker]:
    """examples/reverse_worker.py (py.reverse, py.fail) as a subprocess on dev's NATS."""
    with _py_worker(dev, tmp_path_factory.mktemp("py-worker") / "worker.log") as worker:
        yield worker


class OtlpSink:
    """An OTLP/HTTP trace receiver that keeps the raw bodies it is sent
    (``POST /v1/traces``, protobuf) and answers 200 with an empty
    ExportTraceServiceResponse: enough to see a trace id arrive, with no collector."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        sink = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                sink.bodies.append(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="otlp-sink", daemon=True)
        self.thread.start()

    def received(self) -> bytes:
        return b"".join(list(self.bodies))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def otlp_sink() -> Iterator[OtlpSink]:
    sink = OtlpSink()
    try:
        yield sink
    finally:
        sink.close()


@pytest.fixture(scope="module")
def traced_dev(tmp_path_factory: pytest.TempPathFactory, otlp_sink: OtlpSink) -> Iterator[Dev]:
    """A `taskwire dev` with tracing on (spans over OTLP/HTTP to ``otlp_sink``): its api
    puts the submit's trace context in TaskMessage.traceparent."""
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_sink.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    yield from _dev(tmp_path_factory, "traced-dev", env)


@pytest.fixture(scope="module")
def traced_py_worker(traced_dev: Dev, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PyWorker]:
    """The example Python worker on traced_dev's NATS."""
    with _py_worker(traced_dev, tmp_path_factory.mktemp("traced-py-worker") / "worker.log") as worker:
        yield worker

"""A taskwire worker runtime in Python, speaking docs/protocol.md over NATS JetStream
(nats-py), side by side with the Rust workers.

::

    import asyncio
    from taskwire.worker import TaskContext, TaskFailure, Worker

    worker = Worker("nats://127.0.0.1:4222", ack_wait=30)

    @worker.handler("py.reverse")
    async def reverse(ctx: TaskContext):
        words = str(ctx.input["text"]).split()
        for i, word in enumerate(words, 1):
            await ctx.progress(i / len(words), word)   # one event per word
        return {"reversed": " ".join(reversed(words))}

    asyncio.run(worker.run())       # until SIGINT/SIGTERM, then a graceful drain

Before pulling, the runtime subscribes to ``taskwire.cancel.*`` (routing each signal to
the attempt running that task here) and to ``taskwire.running.*`` (answering a request
on ``taskwire.running.<task_id>`` with the attempt number, as decimal text, of an
attempt of that task that runs here and has claimed it; with nothing otherwise).

It connects as the Rust workers do (docs/security.md, "NATS"): with a user and password,
a credentials file or an nkey seed file, over TLS with a CA and optionally a client
certificate (each a :class:`Worker` argument that defaults to the same ``TASKWIRE_NATS_*``
environment variable as the Rust workers' flag), and with the inbox prefix
``_INBOX_taskwire-worker``, so that NATS's per-role users (deploy/nats-permissions.conf)
confine it like a Rust worker. It never creates or updates a stream, and it reads,
creates (or updates) and pulls only its own kinds' consumers.

A kind may have a limit on its tasks running at once across all workers
(``Worker(max_running={"py.reverse": 2})``, the Rust workers' ``--max-running KIND=N``):
the kind's consumer's ``max_ack_pending``. A worker not given one for a kind keeps the
consumer's current value, so it never lifts a limit another worker set. A kind may also
have a limit on its starts per second by this worker (``Worker(max_rate={"py.reverse":
5})``, the Rust workers' ``--max-rate KIND=N``): a token bucket each pull waits on.

What it does for every delivery (docs/protocol.md §5): decode; on a redelivery, leave
the message alone (no ack, no NAK) if the task's attempt still runs, here or on a live
worker that answers for the newest RUNNING attempt on ``taskwire.running.<task_id>``;
read the task's newest event, ack finished tasks (re-sending the dead letter of a
FAILED one), take the attempt number from the history (the newest event's attempt + 1,
or 1; never the delivery count), fail tasks whose attempts are spent, append RUNNING
conditionally (naming this worker, :func:`worker_name`, in the claim's ``Event.worker``),
run the handler with heartbeats (``+WPI`` every ack_wait/3) and its timeout, append
every progress/log event with ``Nats-Expected-Last-Subject-Sequence``,
and turn the outcome into SUCCEEDED / RETRYING + ``-NAK {"delay":ns}`` / FAILED + dead
letter (``Nats-Msg-Id`` the task id, or ``<task_id>:<run>`` for a retried run N > 1),
acking only after the outcome is stored.

Every attempt continues the task's trace (``TaskMessage.traceparent``, the submit's W3C
trace context): each event it appends carries a ``traceparent`` header with the task's
trace id and a span id of the attempt's own, a random one, or a real OpenTelemetry span's
(a child of the submit's) when the ``opentelemetry`` SDK is installed and configured.

A handler returns the task's output (any JSON value), raises :class:`TaskFailure` to
fail the attempt (retryable or not), or lets :class:`Stopped` propagate when the
attempt was cancelled. Any other exception counts as a crash (``PANIC``, retryable).

Children and fan-in, as the Rust workers do them: a handler that calls
:meth:`TaskContext.spawn` and returns ends its step with a WAITING event (progress =
the step's last, ``waiting for N children``; output = its return value) that carries
the children's task messages (ids: :func:`uuid7`) and the fan-in's kind
(:meth:`TaskContext.fan_in_as`), then acks. The api creates the children; once they
are all terminal it publishes the fan-in message (``TaskMessage.fan_in``: every
child's result, the step's output, ``waiting_seq``), whose step runs with
:attr:`TaskContext.children` set, attempts counted from 1 again, every event carrying
``Event.fan_in_of`` = ``waiting_seq``. A first step's message redelivered after the
task WAITS is acked, not run again; a fan-in message runs only right after its WAITING
event or during its own step.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import inspect
import json
import logging
import math
import os
import random
import re
import signal
import socket
import ssl
import threading
import time
import unicodedata
import uuid
from urllib.parse import urlsplit
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional, Union

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api as js_api
from google.protobuf import duration_pb2, timestamp_pb2

from . import _trace
from ._graph import PolicyLike, cancel_policy_value, child_failure_value
from .internal.v1 import messages_pb2
from .v1 import task_pb2
from .values import JSON, from_value, to_value

__all__ = [
    "INBOX_PREFIX",
    "MAX_CHILDREN",
    "ChildResult",
    "Handler",
    "Stopped",
    "TaskContext",
    "TaskFailure",
    "Worker",
    "backoff",
    "kind_consumer",
    "message_id",
    "task_msg_id",
    "uuid7",
    "worker_name",
]

log = logging.getLogger("taskwire.worker")

TASKS_STREAM = "TASKWIRE_TASKS"
EVENTS_STREAM = "TASKWIRE_EVENTS"
DLQ_STREAM = "TASKWIRE_DLQ"
SCHEMA_HEADER = "Taskwire-Schema"
SCHEMA_VERSION = "1"
EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
MAX_ATTEMPTS_LIMIT = 100

# A kind's consumer's max_ack_pending when the kind has no limit on tasks running at
# once across all workers (docs/protocol.md §3; the Rust workers' UNLIMITED_RUNNING).
UNLIMITED_RUNNING = 10_000
# The largest limit a Rust worker's --max-running KIND=N takes (N is a u32).
_MAX_RUNNING_LIMIT = 2**32 - 1

# Where replies to the worker's requests and its pulls' messages arrive, as for the Rust
# workers (`_INBOX_<process name>`): the only inbox deploy/nats-permissions.conf lets the
# worker's user subscribe to.
INBOX_PREFIX = "_INBOX_taskwire-worker"

# The environment variables the NATS connection options default to: the same as the
# Rust workers' flags (--nats-user, --nats-password, ...).
NATS_USER_ENV = "TASKWIRE_NATS_USER"
NATS_PASSWORD_ENV = "TASKWIRE_NATS_PASSWORD"
NATS_CREDS_ENV = "TASKWIRE_NATS_CREDS"
NATS_NKEY_ENV = "TASKWIRE_NATS_NKEY"
NATS_TLS_CA_ENV = "TASKWIRE_NATS_TLS_CA"
NATS_TLS_CERT_ENV = "TASKWIRE_NATS_TLS_CERT"
NATS_TLS_KEY_ENV = "TASKWIRE_NATS_TLS_KEY"

# How many times a claim reads the history and appends RUNNING before it NAKs for a
# second (docs/protocol.md §5 step 6).
CLAIM_TRIES = 20

# How long a redelivery waits for a live worker to say it still runs the task
# (docs/protocol.md §5 step 2).
ASK_WAIT = 1.0

# How many times one write of a claimed attempt continues after an event it did not
# know was stored (the Rust workers' OWN_EVENT_RESYNCS): one of its own attempt's (an
# append cut off by a stop, e.g. a timeout) or the api's announcement of a child a
# client added (which keeps the attempt and its state), several when children are
# added at once.
OWN_EVENT_RESYNCS = 16

# JetStream API error codes (docs/protocol.md §1, §2).
ERR_WRONG_LAST_SEQUENCE = 10071
ERR_NO_MESSAGE_FOUND = 10037

_KIND_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")

# Most children one step may start (their messages travel in its WAITING event), and
# most bytes of child messages one WAITING event carries (NATS's default max payload
# is 1 MiB; the rest is the event's own fields and headroom). As the Rust workers.
MAX_CHILDREN = 1000
MAX_CHILDREN_BYTES = 900 * 1024

# Labels as the api takes them (SubmitTaskRequest.labels): keys
# [a-z0-9][a-z0-9._/-]{0,62}, values up to 256 bytes without control characters, at
# most 32.
_LABEL_KEY_RE = re.compile(r"[a-z0-9][a-z0-9._/-]{0,62}")
_MAX_LABEL_VALUE_BYTES = 256
_MAX_LABELS = 32

_TERMINAL = frozenset(
    {task_pb2.TASK_STATE_SUCCEEDED, task_pb2.TASK_STATE_FAILED, task_pb2.TASK_STATE_CANCELLED}
)


def kind_consumer(kind: str) -> str:
    """The durable consumer name of a kind: 64-bit FNV-1a of its bytes, low 32 bits."""
    h = 0xCBF29CE484222325
    for b in kind.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"taskwire-kind-{kind.replace('.', '_')}-{h & 0xFFFFFFFF:08x}"


def task_msg_id(task_id: str, run: int) -> str:
    """The ``Nats-Msg-Id`` of run ``run`` of a task's message and of its dead-letter copy
    (docs/protocol.md §4, §5 step 11): the task id for the first run (``run`` 0 or 1),
    ``<task_id>:<run>`` for a retry's, so JetStream's duplicate window drops repeats of
    one run, never a later run's copy."""
    return task_id if run <= 1 else f"{task_id}:{run}"


def message_id(body: messages_pb2.TaskMessage) -> str:
    """The ``Nats-Msg-Id`` of a task message and of its dead-letter copy:
    :func:`task_msg_id`, or for a parent's fan-in step (``TaskMessage.fan_in`` set)
    ``<task_id>:fan-in:<seq of its WAITING event>``, as the api publishes it."""
    if body.HasField("fan_in"):
        return f"{body.task_id}:fan-in:{body.fan_in.waiting_seq}"
    return task_msg_id(body.task_id, body.run)


_uuid7_lock = threading.Lock()
_uuid7_last = (0, 0)  # (unix ms, 74 random bits) of the newest id made here


def uuid7() -> str:
    """A new UUIDv7 (RFC 9562: 48 bits of Unix milliseconds, then 74 random bits), as
    the Rust side makes task ids, lower-case hyphenated. Ids made by this process only
    ever increase, also within one millisecond (the random part then counts on from
    the previous id's), so children spawned one after the other sort in that order."""
    global _uuid7_last
    with _uuid7_lock:
        ms = time.time_ns() // 1_000_000
        last_ms, last_rand = _uuid7_last
        if ms > last_ms:
            rand = int.from_bytes(os.urandom(10), "big") >> 6
        else:
            # The same millisecond (or the clock went back): count on.
            ms, rand = last_ms, last_rand + 1 + (int.from_bytes(os.urandom(2), "big") & 0xFF)
            if rand >= 1 << 74:
                ms, rand = ms + 1, int.from_bytes(os.urandom(10), "big") >> 7
        _uuid7_last = (ms, rand)
    value = (ms & (2**48 - 1)) << 80 | 0x7 << 76 | (rand >> 62) << 64 | 0b10 << 62 | (rand & (2**62 - 1))
    return str(uuid.UUID(int=value))


def valid_kind(kind: str) -> bool:
    # fullmatch: `$` alone would let a trailing newline through.
    return bool(_KIND_RE.fullmatch(kind)) and "" not in kind.split(".")


def _kind_limits(limits_arg: Optional[Mapping[str, int]], what: str = "max_running") -> dict[str, int]:
    """Checks ``Worker(max_running=...)`` or ``Worker(max_rate=...)``: valid kinds, whole
    numbers 0..=2^32-1."""
    limits: dict[str, int] = {}
    for kind, n in (limits_arg or {}).items():
        if not isinstance(kind, str) or not valid_kind(kind):
            raise ValueError(
                f"{what}: invalid task kind {kind!r}: [a-z0-9][a-z0-9._-]{{0,127}}, no empty dot part"
            )
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= _MAX_RUNNING_LIMIT:
            raise ValueError(
                f"{what}[{kind!r}] must be a whole number 0..={_MAX_RUNNING_LIMIT} (0 lifts the limit), not {n!r}"
            )
        limits[kind] = int(n)
    return limits


def _parse_kind_limits(text: str) -> list[tuple[str, int]]:
    """``--max-running KIND=N[,KIND=N...]`` (and ``--max-rate``), as the Rust workers'
    flags take them."""
    out: list[tuple[str, int]] = []
    for item in text.split(","):
        kind, sep, n = item.partition("=")
        kind, n = kind.strip(), n.strip()
        if not sep:
            raise argparse.ArgumentTypeError(f"{item!r} must be KIND=N, e.g. demo.sleep=2")
        if not valid_kind(kind):
            raise argparse.ArgumentTypeError(
                f"{item!r}: invalid task kind {kind!r}: [a-z0-9][a-z0-9._-]{{0,127}}, no empty dot part"
            )
        if not (n.isascii() and n.isdigit()) or int(n) > _MAX_RUNNING_LIMIT:
            raise argparse.ArgumentTypeError(f"{item!r}: N must be a whole number (0 lifts the limit)")
        out.append((kind, int(n)))
    return out


def backoff(attempt: int, base: float = 1.0, maximum: float = 300.0) -> float:
    """Seconds to wait before attempt ``attempt + 1``:
    ``min(base * 2^min(attempt-1, 20), max) * (0.75 + 0.25 * U)``."""
    exp = base * (2 ** min(max(attempt - 1, 0), 20))
    return min(exp, maximum) * (0.75 + 0.25 * random.random())


class _StartRate:
    """A token bucket of one kind's task starts (the Rust workers' ``StartRate``):
    ``rate`` per second, in bursts of up to ``rate``. Each pull waits for a whole token
    and fetches no more messages than there are tokens, so no fetched task waits with
    its ack_wait running."""

    def __init__(self, rate: int) -> None:
        if rate < 1:
            raise ValueError("a start rate is at least 1 per second")
        self.rate = float(rate)
        self.tokens = float(rate)
        self.at = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.tokens = min(self.tokens + (now - self.at) * self.rate, self.rate)
        self.at = now

    async def available(self) -> int:
        """Waits for at least one whole token; returns how many there are."""
        self._refill()
        if self.tokens < 1.0:
            await asyncio.sleep((1.0 - self.tokens) / self.rate)
            self._refill()
        return max(int(math.floor(self.tokens)), 1)

    def spend(self, n: int) -> None:
        self.tokens -= n


_HOSTNAME: Optional[str] = None


def _hostname() -> str:
    """This machine's name, as the Rust workers read it (``/proc/sys/kernel/hostname``,
    else ``$HOSTNAME``), else the socket module's, else ``unknown``."""
    global _HOSTNAME
    if _HOSTNAME is None:
        host = ""
        with contextlib.suppress(OSError, UnicodeDecodeError):
            with open("/proc/sys/kernel/hostname", encoding="utf-8") as f:
                host = f.read().strip()
        if not host:
            host = os.environ.get("HOSTNAME", "").strip()
        if not host:
            with contextlib.suppress(OSError):
                host = socket.gethostname().strip()
        _HOSTNAME = host or "unknown"
    return _HOSTNAME


def worker_name() -> str:
    """This process as a task's attempt history names it:
    ``taskwire-python-worker@<host>:<pid>`` (the Rust workers':
    ``taskwire-worker@<host>:<pid>``). Sent in ``Event.worker`` on each attempt's claim
    (its first RUNNING event) only; the api's ``ListAttempts`` shows it."""
    return f"taskwire-python-worker@{_hostname()}:{os.getpid()}"


class TaskFailure(Exception):
    """Raised by a handler to fail its attempt. ``retryable`` failures are retried
    (with backoff) while attempts are left; others fail the task at once."""

    def __init__(self, message: str, *, code: str = "HANDLER_ERROR", retryable: bool = True) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retryable = retryable

    @classmethod
    def fatal(cls, message: str, *, code: str = "HANDLER_ERROR") -> "TaskFailure":
        """A failure no other attempt could fix."""
        return cls(message, code=code, retryable=False)

    def to_proto(self) -> task_pb2.TaskError:
        return task_pb2.TaskError(code=self.code, message=self.message, retryable=self.retryable)


class Stopped(Exception):
    """The attempt was stopped (cancelled, or another writer took the task): the
    handler must stop and report nothing more. Raised by :meth:`TaskContext.progress`,
    :meth:`TaskContext.log` and :meth:`TaskContext.sleep`."""

    def __init__(self) -> None:
        super().__init__("the attempt was stopped (cancelled or taken over)")


class _Conflict(Exception):
    """A conditional publish lost: someone else appended to the task first."""


class _Unavailable(Exception):
    """NATS did not answer or refused for another reason."""


PathLike = Union[str, "os.PathLike[str]"]


def _setting(value: Optional[PathLike], env: str, arg: str) -> tuple[str, str]:
    """An option's value and where it came from: the argument when given (``""`` =
    none), else the environment variable (unset or empty = none)."""
    if value is None:
        return os.environ.get(env, ""), f"${env}"
    return os.fspath(value), f"{arg}="


def _readable(path: str, what: str, source: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise type(e)(e.errno, f"cannot read the {what} {path!r} (from {source}): {e.strerror}") from None


@dataclass(frozen=True)
class _NatsAuth:
    """How the worker proves who it is to NATS, and its TLS: the options of the Rust
    workers' ``--nats-*`` flags, resolved against their environment variables."""

    user: str = ""
    password: str = field(default="", repr=False)
    creds: str = ""
    nkey: str = ""
    tls: Optional[ssl.SSLContext] = None
    # A CA was given: connect only to a server that requires TLS (as the Rust
    # services' --nats-tls-ca does), never sending credentials in clear.
    tls_required: bool = False
    tls_source: str = ""

    def describe(self) -> str:
        if self.creds:
            return f"credentials file {self.creds}"
        if self.nkey:
            return f"nkey seed file {self.nkey}"
        if self.user:
            return f"user {self.user!r}"
        return "no credentials"

    def connect_options(self) -> dict[str, Any]:
        o: dict[str, Any] = {}
        if self.user:
            o.update(user=self.user, password=self.password)
        if self.creds:
            o["user_credentials"] = self.creds
        if self.nkey:
            o["nkeys_seed"] = self.nkey
        if self.tls is not None:
            o["tls"] = self.tls
        return o

    @classmethod
    def resolve(
        cls,
        user: Optional[str],
        password: Optional[str],
        creds: Optional[PathLike],
        nkey: Optional[PathLike],
        tls_ca: Optional[PathLike],
        tls_cert: Optional[PathLike],
        tls_key: Optional[PathLike],
    ) -> "_NatsAuth":
        user_v, user_src = _setting(user, NATS_USER_ENV, "nats_user")
        password_v, password_src = _setting(password, NATS_PASSWORD_ENV, "nats_password")
        creds_v, creds_src = _setting(creds, NATS_CREDS_ENV, "nats_creds")
        nkey_v, nkey_src = _setting(nkey, NATS_NKEY_ENV, "nats_nkey")
        ca_v, ca_src = _setting(tls_ca, NATS_TLS_CA_ENV, "nats_tls_ca")
        cert_v, cert_src = _setting(tls_cert, NATS_TLS_CERT_ENV, "nats_tls_cert")
        key_v, key_src = _setting(tls_key, NATS_TLS_KEY_ENV, "nats_tls_key")

        if user_v and not password_v:
            raise ValueError(f"a NATS user ({user_src}) needs its password (nats_password= or ${NATS_PASSWORD_ENV})")
        if password_v and not user_v:
            raise ValueError(f"a NATS password ({password_src}) needs its user (nats_user= or ${NATS_USER_ENV})")
        if creds_v and nkey_v:
            raise ValueError(
                f"give either a NATS credentials file ({creds_src}) or an nkey seed file ({nkey_src}), not both"
            )
        if creds_v:
            _readable(creds_v, "NATS credentials file", creds_src)
        if nkey_v:
            _readable(nkey_v, "NATS nkey seed file", nkey_src)
        if creds_v or nkey_v:
            try:
                import nkeys
            except ImportError:
                raise ImportError(
                    "NATS credentials and nkey files need the nkeys package: pip install 'taskwire[worker]' "
                    "(or nkeys)"
                ) from None
            if nkey_v:
                with open(nkey_v, "rb") as f:
                    seed = bytearray(f.read().strip())
                try:
                    nkeys.from_seed(seed).wipe()
                except Exception as e:
                    raise ValueError(f"{nkey_v} (from {nkey_src}) holds no valid nkey seed: {e!r}") from None
                finally:
                    seed[:] = b"\0" * len(seed)

        if bool(cert_v) != bool(key_v):
            which = cert_src if cert_v else key_src
            raise ValueError(
                f"a NATS TLS client certificate needs its key and the key its certificate ({which} given alone; "
                f"nats_tls_cert=/${NATS_TLS_CERT_ENV} and nats_tls_key=/${NATS_TLS_KEY_ENV})"
            )
        ctx: Optional[ssl.SSLContext] = None
        if ca_v or cert_v:
            if ca_v:
                _readable(ca_v, "NATS TLS CA", ca_src)
            try:
                ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_v or None)
            except ssl.SSLError as e:
                raise ValueError(f"the NATS TLS CA {ca_v!r} (from {ca_src}) is not a PEM certificate: {e}") from None
            if cert_v:
                _readable(cert_v, "NATS TLS client certificate", cert_src)
                _readable(key_v, "NATS TLS client key", key_src)
                try:
                    ctx.load_cert_chain(cert_v, key_v)
                except ssl.SSLError as e:
                    raise ValueError(
                        f"the NATS TLS client certificate {cert_v!r} ({cert_src}) and key {key_v!r} ({key_src}) "
                        f"do not load: {e}"
                    ) from None
        return cls(
            user=user_v,
            password=password_v,
            creds=creds_v,
            nkey=nkey_v,
            tls=ctx,
            tls_required=bool(ca_v),
            tls_source=ca_src if ca_v else "",
        )


def _refusal(e: BaseException) -> bool:
    """Whether a connection error will not go away by trying again: the server refused
    the credentials, or TLS failed (e.g. a certificate the CA did not sign)."""
    if isinstance(e, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return False  # the connection went away mid-handshake: may be a restart
    if isinstance(e, (nats.errors.AuthorizationError, ssl.SSLError)):
        return True
    return "authorization violation" in str(e).lower()


async def _server_requires_tls(url: str, tls: ssl.SSLContext, timeout: float) -> Optional[bool]:
    """Whether the NATS server at ``url`` requires TLS, read from the INFO line it
    sends first, before any credentials would be sent; None if it cannot be asked now.
    When it does, the TLS handshake is made too (so the server sees a whole one, and a
    certificate ``tls`` does not trust is an ``ssl.SSLError`` here), then the
    connection closed."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if parts.scheme == "wss":
        return True
    if parts.scheme not in ("nats", "tls") or not parts.hostname:
        return None
    host = parts.hostname
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, parts.port or 4222), timeout=timeout)
    except (OSError, asyncio.TimeoutError, ValueError):
        return None
    transport: Any = writer.transport
    try:
        line = await asyncio.wait_for(reader.readline(), timeout=timeout)
        if not line.startswith(b"INFO "):
            return None
        if not json.loads(line[5:]).get("tls_required"):
            return False
        transport = await asyncio.get_running_loop().start_tls(
            transport, transport.get_protocol(), tls, server_hostname=host, ssl_handshake_timeout=timeout
        )
        return True
    except ssl.SSLError:
        raise
    except (OSError, asyncio.TimeoutError, ValueError):
        return None
    finally:
        if transport is not None:
            transport.close()


def _now() -> timestamp_pb2.Timestamp:
    # taskwire writes microsecond precision.
    us = time.time_ns() // 1000
    return timestamp_pb2.Timestamp(seconds=us // 1_000_000, nanos=(us % 1_000_000) * 1000)


class _EventWriter:
    """Appends one attempt's events to ``taskwire.events.<task_id>``, each with the
    expected last subject sequence (and the attempt's ``traceparent``, if it has one),
    one write at a time. In a parent's fan-in step every event carries ``fan_in_of``,
    the seq of the WAITING event the step follows.

    Once the attempt has claimed the task (``claimed``), a write that loses because
    the history has an event it did not know of reads the newest event (``newest``):
    if that is still this attempt running (same attempt, same ``fan_in_of``, RUNNING),
    the write continues after it, as the Rust workers' do; anything else (another
    worker's claim, a cancel) stays a conflict. The claim itself never continues so."""

    def __init__(
        self,
        js: Any,
        task_id: str,
        kind: str,
        attempt: int,
        last_seq: int,
        timeout: float,
        trace: Optional[_trace.AttemptTrace] = None,
        fan_in_of: int = 0,
        newest: Optional[Callable[[str], Awaitable[Optional[tuple[int, messages_pb2.Event]]]]] = None,
    ) -> None:
        self.js = js
        self.task_id = task_id
        self.kind = kind
        self.attempt = attempt
        self.last_seq = last_seq
        self.timeout = timeout
        self.trace = trace or _trace.AttemptTrace(None)
        self.fan_in_of = fan_in_of
        self.newest = newest
        self.claimed = False
        self._lock = asyncio.Lock()

    async def write(
        self,
        state: int,
        *,
        progress: Optional[task_pb2.Progress] = None,
        output: Optional[Any] = None,
        error: Optional[task_pb2.TaskError] = None,
        message: str = "",
        worker: str = "",
        children: Sequence[messages_pb2.TaskMessage] = (),
        fan_in_kind: str = "",
    ) -> int:
        """Appends one event; ``worker`` (the worker's name) is for the claim only,
        ``children`` and ``fan_in_kind`` for a WAITING event."""
        ev = messages_pb2.Event(
            task_id=self.task_id,
            time=_now(),
            state=state,  # type: ignore[arg-type]
            attempt=self.attempt,
            message=message,
            kind=self.kind,
            worker=worker,
            fan_in_kind=fan_in_kind,
            fan_in_of=self.fan_in_of,
        )
        if progress is not None:
            ev.progress.CopyFrom(progress)
        if output is not None:
            ev.output.CopyFrom(output)
        if error is not None:
            ev.error.CopyFrom(error)
        if children:
            ev.children.extend(children)
        payload = ev.SerializeToString()
        async with self._lock:
            for _ in range(OWN_EVENT_RESYNCS):
                try:
                    seq = await self._append(payload)
                except _Conflict:
                    if not await self._resync():
                        raise
                    continue
                self.last_seq = seq
                return seq
            raise _Conflict()

    async def _append(self, payload: bytes) -> int:
        headers = {
            SCHEMA_HEADER: SCHEMA_VERSION,
            EXPECTED_LAST_SUBJECT_SEQ: str(self.last_seq),
        }
        if self.trace.traceparent:
            headers[_trace.TRACEPARENT] = self.trace.traceparent
        try:
            ack = await self.js.publish(
                f"taskwire.events.{self.task_id}",
                payload,
                timeout=self.timeout,
                headers=headers,
            )
        except nats.js.errors.APIError as e:
            if e.err_code == ERR_WRONG_LAST_SEQUENCE:
                raise _Conflict() from e
            raise _Unavailable(str(e)) from e
        except (nats.errors.Error, asyncio.TimeoutError, OSError) as e:
            raise _Unavailable(repr(e)) from e
        return int(ack.seq)

    async def _resync(self) -> bool:
        """After a lost append: whether the newest event is still this attempt running
        (then ``last_seq`` moves to it and the write is tried again)."""
        if not self.claimed or self.newest is None:
            return False
        newest = await self.newest(self.task_id)  # _Unavailable propagates
        if newest is None:
            return False
        seq, ev = newest
        if (
            seq > self.last_seq
            and ev.attempt == self.attempt
            and ev.fan_in_of == self.fan_in_of
            and ev.state == task_pb2.TASK_STATE_RUNNING
        ):
            self.last_seq = seq
            return True
        return False


@dataclass(frozen=True)
class ChildResult:
    """How one child ended, as its parent's fan-in step sees it
    (:attr:`TaskContext.children`): its ``task_id`` and ``kind``, its ``state`` (a
    ``TaskState`` value: SUCCEEDED, FAILED or CANCELLED), its ``output`` (JSON, if it
    succeeded) and its ``error`` (a ``task_pb2.TaskError``, if it failed)."""

    task_id: str
    kind: str
    state: int
    output: JSON = None
    error: Optional[task_pb2.TaskError] = None

    @property
    def succeeded(self) -> bool:
        return self.state == task_pb2.TASK_STATE_SUCCEEDED

    @property
    def state_name(self) -> str:
        """``"SUCCEEDED"``, ``"FAILED"`` or ``"CANCELLED"``."""
        return task_pb2.TaskState.Name(self.state).removeprefix("TASK_STATE_")  # type: ignore[arg-type]

    @classmethod
    def from_proto(cls, c: messages_pb2.ChildResult) -> "ChildResult":
        return cls(
            task_id=c.task_id,
            kind=c.kind,
            state=int(c.state),
            output=from_value(c.output) if c.HasField("output") else None,
            error=task_pb2.TaskError(code=c.error.code, message=c.error.message, retryable=c.error.retryable)
            if c.HasField("error")
            else None,
        )


def _bad_child(why: str) -> TaskFailure:
    return TaskFailure.fatal(why, code="BAD_CHILD")


def _child_labels(labels: Optional[Mapping[str, str]]) -> dict[str, str]:
    """A child's labels, checked as the api checks a submit's (BAD_CHILD otherwise)."""
    out: dict[str, str] = {}
    for k, v in (labels or {}).items():
        if not isinstance(k, str) or not _LABEL_KEY_RE.fullmatch(k):
            raise _bad_child(f"label key {k!r} must match [a-z0-9][a-z0-9._/-]{{0,62}}")
        if (
            not isinstance(v, str)
            or len(v.encode()) > _MAX_LABEL_VALUE_BYTES
            or any(unicodedata.category(c) == "Cc" for c in v)
        ):
            raise _bad_child(
                f"the value of label {k!r} must be a string of at most {_MAX_LABEL_VALUE_BYTES} bytes "
                "with no control characters"
            )
        out[k] = v
    if len(out) > _MAX_LABELS:
        raise _bad_child(f"at most {_MAX_LABELS} labels")
    return out


def _child_timeout(timeout: Union[float, int, datetime.timedelta]) -> duration_pb2.Duration:
    if isinstance(timeout, datetime.timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        seconds = float(timeout)
    else:
        raise _bad_child(f"a child's timeout must be seconds or a timedelta, not {type(timeout).__name__}")
    if not math.isfinite(seconds) or seconds <= 0 or seconds > 24 * 3600:
        raise _bad_child(f"a child's timeout must be positive and at most 24h, not {timeout!r}")
    d = duration_pb2.Duration()
    d.FromTimedelta(datetime.timedelta(seconds=seconds))
    return d


class TaskContext:
    """What a handler gets: the task, its attempt, and ways to report and to notice a
    stop. ``deadline`` is on the ``time.monotonic()`` clock. ``traceparent`` is the
    attempt's W3C trace context (None when the task is not traced), e.g. to pass on to
    the tasks a handler submits.

    Children: :meth:`spawn` starts a child task once the step ends well; the task then
    WAITS for its children and runs its fan-in step (this kind, or the one named with
    :meth:`fan_in_as`), where :attr:`children` holds their results and
    :attr:`step_output` what the first step returned."""

    def __init__(
        self,
        *,
        task_id: str,
        kind: str,
        input: JSON,
        labels: dict[str, str],
        attempt: int,
        max_attempts: int,
        deadline: float,
        stop: asyncio.Event,
        writer: _EventWriter,
        traceparent: Optional[str] = None,
        fan_in: Optional[messages_pb2.FanIn] = None,
    ) -> None:
        self.task_id = task_id
        self.kind = kind
        self.input = input
        self.labels = labels
        self.attempt = attempt
        self.max_attempts = max_attempts
        self.deadline = deadline
        self.traceparent = traceparent
        self._stop = stop
        self._writer = writer
        self._children: Optional[list[ChildResult]] = None
        self._step_output: JSON = None
        if fan_in is not None:
            self._children = [ChildResult.from_proto(c) for c in fan_in.children]
            self._step_output = from_value(fan_in.step_output) if fan_in.HasField("step_output") else None
        # What this step started, the kind of its fan-in, and its last progress (where
        # its tree's share starts: the WAITING event's progress).
        self._spawned: list[messages_pb2.TaskMessage] = []
        self._fan_in_kind = ""
        self._progress = 0.0

    @property
    def children(self) -> Optional[list[ChildResult]]:
        """In a fan-in step: how each child ended, in the order they were started (but
        those with the ``"ignore"`` policy that did not succeed). None in a first step."""
        return None if self._children is None else list(self._children)

    @property
    def step_output(self) -> JSON:
        """In a fan-in step: what the task's first step returned (None otherwise)."""
        return self._step_output

    @property
    def spawned(self) -> list[str]:
        """The ids of the children this step has spawned so far."""
        return [c.task_id for c in self._spawned]

    def spawn(
        self,
        kind: str,
        input: JSON = None,
        *,
        on_failure: PolicyLike = "fail_parent",
        labels: Optional[Mapping[str, str]] = None,
        max_attempts: int = 0,
        timeout: Optional[Union[float, int, datetime.timedelta]] = None,
        cancel_policy: PolicyLike = "cascade",
    ) -> str:
        """Starts a child task of ``kind`` with ``input`` once this step ends well, and
        returns its id (a new UUIDv7). The children a step spawns are created, all of
        them at once, when its handler returns (its return value is then the step's
        output, :attr:`step_output` in the fan-in); the task WAITS for them, and runs
        its fan-in step once they are all terminal. A step that fails (or is stopped)
        starts none; its retry spawns anew. The tree's progress goes on from this
        step's last reported progress: a step that spawns should report only its own
        share of the whole (planning as 0.1, say), not 1.

        ``on_failure``: what the child's failure (or cancel) does to this task:
        ``"fail_parent"`` (it FAILS at once with code CHILD_FAILED, its other children
        are cancelled), ``"ignore"`` (the fan-in runs without its result) or
        ``"continue"`` (the fan-in gets its error). ``cancel_policy``: what cancelling
        the child does to its own children: ``"cascade"`` or ``"abandon"``. Both take
        ``task_pb2`` enum values too. ``labels`` as a submit's; ``max_attempts`` 1 to
        100 (0: this task's); ``timeout`` per attempt (seconds or a timedelta; None:
        the worker's default). At most :data:`MAX_CHILDREN` (1000) per step. A bad
        argument raises :class:`TaskFailure` with code BAD_CHILD (fatal: let it
        propagate)."""
        if not isinstance(kind, str) or not valid_kind(kind):
            raise _bad_child(f"a child's kind must match [a-z0-9][a-z0-9._-]{{0,127}}, not {kind!r}")
        try:
            child_failure = child_failure_value(on_failure, "on_failure") or task_pb2.CHILD_FAILURE_POLICY_FAIL_PARENT
            cancel = cancel_policy_value(cancel_policy) or task_pb2.CANCEL_POLICY_CASCADE
        except (TypeError, ValueError) as e:
            raise _bad_child(str(e)) from None
        child_labels = _child_labels(labels)
        if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or not 0 <= max_attempts <= 100:
            raise _bad_child(f"a child's max_attempts is 0 (this task's) to 100, not {max_attempts!r}")
        try:
            value = to_value(input)
        except (TypeError, ValueError) as e:
            raise _bad_child(f"a child's input must be JSON: {e}") from None
        if len(self._spawned) >= MAX_CHILDREN:
            raise _bad_child(f"a step starts at most {MAX_CHILDREN} children")
        child = messages_pb2.TaskMessage(
            task_id=uuid7(),
            kind=kind,
            input=value,
            max_attempts=max_attempts or self.max_attempts,
            labels=child_labels,
            created_at=_now(),
            traceparent=self.traceparent or "",
            parent_id=self.task_id,
            child_failure=child_failure,  # type: ignore[arg-type]
            cancel_policy=cancel,  # type: ignore[arg-type]
        )
        if timeout is not None:
            child.timeout.CopyFrom(_child_timeout(timeout))
        self._spawned.append(child)
        return child.task_id

    def fan_in_as(self, kind: str) -> None:
        """Names the kind whose handler runs this task's fan-in step (default: its
        own); BAD_CHILD (:class:`TaskFailure`) for an invalid kind."""
        if not isinstance(kind, str) or not valid_kind(kind):
            raise _bad_child(f"a fan-in kind must match [a-z0-9][a-z0-9._-]{{0,127}}, not {kind!r}")
        self._fan_in_kind = kind

    @property
    def cancelled(self) -> bool:
        """Whether the attempt was stopped (cancel signal, lost append, shutdown)."""
        return self._stop.is_set()

    async def wait_cancelled(self) -> None:
        """Returns once the attempt is stopped."""
        await self._stop.wait()

    async def sleep(self, seconds: float) -> None:
        """Sleeps, raising :class:`Stopped` at once if the attempt is stopped."""
        if self._stop.is_set():
            raise Stopped()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), timeout=max(0.0, seconds))
        if self._stop.is_set():
            raise Stopped()

    async def progress(self, fraction: float, message: str = "") -> None:
        """Appends a RUNNING event with progress (fraction clamped to [0, 1])."""
        f = float(fraction)
        f = min(max(f, 0.0), 1.0) if math.isfinite(f) else 0.0
        self._progress = f
        await self._send(progress=task_pb2.Progress(fraction=f, message=str(message)))

    async def log(self, line: str) -> None:
        """Appends a RUNNING event carrying a log line (watchers see it)."""
        await self._send(message=str(line))

    async def _send(self, **fields: Any) -> None:
        if self._stop.is_set():
            raise Stopped()
        try:
            await self._writer.write(task_pb2.TASK_STATE_RUNNING, **fields)
        except (_Conflict, _Unavailable) as e:
            # Any failed append stops the attempt (docs/protocol.md §5 step 8).
            log.warning("task %s: event not stored (%r); stopping the attempt", self.task_id, e)
            self._stop.set()
            raise Stopped() from None


Handler = Callable[[TaskContext], Awaitable[Any]]


@dataclass(eq=False)
class _Registration:
    """An attempt running in this process: how to stop it (cancel signals), and its
    number once it has claimed the task (running-requests are answered from then on).
    Compared by identity, so an attempt's deregistration never removes a later
    registration of the same task."""

    stop: asyncio.Event
    attempt: Optional[int] = None


@dataclass
class _Slots:
    """Concurrency slots: fetch only as many messages as can start now."""

    free: int
    cond: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def acquire(self, most: int) -> int:
        async with self.cond:
            await self.cond.wait_for(lambda: self.free > 0)
            n = min(self.free, most)
            self.free -= n
            return n

    async def release(self, n: int = 1) -> None:
        if n <= 0:
            return
        async with self.cond:
            self.free += n
            self.cond.notify_all()


class Worker:
    """Runs registered handlers for their kinds' tasks.

    ``ack_wait`` (seconds) must equal the other workers' of the same kinds (the shared
    consumer takes the last one set). ``backoff_base``/``backoff_max`` give the retry
    delay; ``default_timeout`` is the per-attempt timeout of tasks submitted without
    one; ``shutdown_grace`` is how long running handlers may finish at shutdown before
    they are handed back. ``stream_wait`` is how long :meth:`start` waits for NATS and
    the streams (the worker does not create them: an api, Rust worker or recorder does).
    ``max_deliver`` is the consumer's backstop (docs/protocol.md §3: 101); like
    ``ack_wait``, it must match the other workers of the same kinds.

    ``max_running`` (``{kind: N}``, the Rust workers' ``--max-running KIND=N``) limits
    a kind to at most N tasks running at once across all workers, in any language: it
    is the kind's shared consumer's ``max_ack_pending``, so JetStream delivers no more
    of its tasks while N are unacknowledged (running, or waiting out a retry's delay).
    N = 0 lifts a limit (``max_ack_pending`` 10 000, the default). A kind not named
    keeps what its consumer has: the worker reads the consumer first and reuses its
    ``max_ack_pending`` (10 000 for a new consumer), so a worker without a limit never
    lifts one another worker set. Set a limit on one worker, or the same on all. Named
    kinds without a handler here are ignored (with a warning at :meth:`start`).

    ``max_rate`` (``{kind: N}``, the Rust workers' ``--max-rate KIND=N``) limits the
    kind's task starts by this worker to at most N per second, in bursts of up to N: a
    token bucket that each pull of the kind waits on, fetching no more messages than it
    holds tokens (so no fetched task waits with its ack_wait running). It is per worker
    process: R workers start up to R x N per second (``max_running`` bounds a kind
    across all workers). N = 0, or a kind not named, has no limit.

    Each attempt's claim (its first RUNNING event) carries the worker's name in
    ``Event.worker``, :func:`worker_name` (``taskwire-python-worker@<host>:<pid>``),
    which the api's attempt history (``Client.attempts``) shows.

    Connecting to a NATS that checks who connects (docs/security.md, "NATS"), as the
    Rust workers' flags do; each argument defaults to the same environment variable
    (``None``: read it; ``""``: none, whatever it says):

    - ``nats_user`` / ``nats_password`` (``TASKWIRE_NATS_USER`` /
      ``TASKWIRE_NATS_PASSWORD``): a user and its password, e.g. the ``worker`` user of
      deploy/nats-permissions.conf; one needs the other.
    - ``nats_creds`` (``TASKWIRE_NATS_CREDS``): a credentials file (a user JWT and its
      nkey seed, as ``nsc`` writes them), or ``nats_nkey`` (``TASKWIRE_NATS_NKEY``): a
      file holding an nkey seed (``SU...``); not both. Both need the ``nkeys`` package
      (``pip install 'taskwire[worker]'``).
    - ``nats_tls_ca`` (``TASKWIRE_NATS_TLS_CA``): the PEM CA that signed the servers'
      certificates; with it the worker connects only to a server that requires TLS.
      ``nats_tls_cert`` + ``nats_tls_key`` (``TASKWIRE_NATS_TLS_CERT`` /
      ``TASKWIRE_NATS_TLS_KEY``): a client certificate and its key, for servers that
      verify clients.

    The files are checked (and the TLS files loaded) here; a missing or unreadable one
    is an ``OSError`` naming it, a contradiction a ``ValueError``. Replies and pulled
    messages arrive under ``inbox_prefix`` (``_INBOX_taskwire-worker``, the inbox the
    worker's user may subscribe to). :meth:`start` raises ``PermissionError`` at once
    when the server refuses the credentials, rather than trying again for
    ``stream_wait``.
    """

    def __init__(
        self,
        nats_url: str = "nats://127.0.0.1:4222",
        *,
        ack_wait: float = 30.0,
        concurrency: int = 16,
        backoff_base: float = 1.0,
        backoff_max: float = 300.0,
        default_timeout: float = 3600.0,
        shutdown_grace: float = 20.0,
        nats_timeout: float = 5.0,
        stream_wait: float = 30.0,
        max_deliver: int = MAX_ATTEMPTS_LIMIT + 1,
        max_running: Optional[Mapping[str, int]] = None,
        max_rate: Optional[Mapping[str, int]] = None,
        name: str = "taskwire-worker-py",
        nats_user: Optional[str] = None,
        nats_password: Optional[str] = None,
        nats_creds: Optional[PathLike] = None,
        nats_nkey: Optional[PathLike] = None,
        nats_tls_ca: Optional[PathLike] = None,
        nats_tls_cert: Optional[PathLike] = None,
        nats_tls_key: Optional[PathLike] = None,
        inbox_prefix: str = INBOX_PREFIX,
    ) -> None:
        if ack_wait < 0.3:
            raise ValueError("ack_wait must be at least 0.3 seconds")
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.nats_url = nats_url
        self.ack_wait = float(ack_wait)
        self.concurrency = concurrency
        self.backoff_base = float(backoff_base)
        self.backoff_max = max(float(backoff_max), self.backoff_base)
        self.default_timeout = float(default_timeout)
        self.shutdown_grace = float(shutdown_grace)
        self.nats_timeout = float(nats_timeout)
        self.stream_wait = float(stream_wait)
        self.max_deliver = int(max_deliver)
        # The kinds given a limit on tasks running at once (0 = lift it); kinds not
        # named keep their consumer's.
        self.max_running: dict[str, int] = _kind_limits(max_running)
        # The kinds given a limit on tasks started per second by this worker (0 = none).
        self.max_rate: dict[str, int] = _kind_limits(max_rate, "max_rate")
        self.name = name
        self.inbox_prefix = inbox_prefix
        self._auth = _NatsAuth.resolve(
            nats_user, nats_password, nats_creds, nats_nkey, nats_tls_ca, nats_tls_cert, nats_tls_key
        )
        self._handlers: dict[str, Handler] = {}
        self._nc: Optional[NATS] = None
        self._js: Any = None
        self._jsm: Any = None
        self._subs: dict[str, Any] = {}
        self._cancel_sub: Any = None
        self._running_sub: Any = None
        self._running: dict[str, _Registration] = {}
        self._attempts: set[asyncio.Task[None]] = set()
        self._hand_back = asyncio.Event()
        self._shutdown = asyncio.Event()
        self._slots: Optional[_Slots] = None
        self._closing = False

    # -- registration ---------------------------------------------------------------

    def register(self, kind: str, handler: Handler) -> "Worker":
        """Registers ``handler`` (an async function of a :class:`TaskContext`) for a kind."""
        if not valid_kind(kind):
            raise ValueError(f"invalid task kind {kind!r}: [a-z0-9][a-z0-9._-]{{0,127}}, no empty dot part")
        if not (inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(getattr(handler, "__call__", None))):
            raise TypeError(f"the handler of {kind} must be an async function of a TaskContext")
        self._handlers[kind] = handler
        return self

    def handler(self, kind: str) -> Callable[[Handler], Handler]:
        """Decorator form of :meth:`register`."""

        def deco(fn: Handler) -> Handler:
            self.register(kind, fn)
            return fn

        return deco

    @property
    def kinds(self) -> list[str]:
        return sorted(self._handlers)

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Connects, waits for the streams, subscribes to cancel signals and sets up one
        durable pull consumer per registered kind."""
        if not self._handlers:
            raise ValueError("no task kinds registered")
        self._nc = await self._connect()
        try:
            await self._setup()
        except BaseException:
            await self.close()
            raise
        log.info("worker connected to %s (%s); kinds %s", self.nats_url, self._auth.describe(), self.kinds)

    async def _connect(self) -> NATS:
        """The first connection, within ``stream_wait`` (it reconnects forever once
        connected). Tried again while NATS does not answer; not when it refuses the
        credentials or TLS fails, which raise at once."""
        deadline = time.monotonic() + self.stream_wait
        auth = self._auth
        if auth.tls_required:
            await self._require_tls(deadline)
        nc = NATS()
        first = True
        refused: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
        last: list[BaseException] = []

        async def on_error(e: Exception) -> None:
            if first:
                last[:] = [e]
                if _refusal(e) and not refused.done():
                    refused.set_result(e)
            await self._on_nats_error(e)

        connecting = asyncio.create_task(
            nc.connect(
                self.nats_url,
                name=self.name,
                connect_timeout=self.nats_timeout,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                error_cb=on_error,
                disconnected_cb=self._on_disconnected,
                reconnected_cb=self._on_reconnected,
                inbox_prefix=self.inbox_prefix,
                **auth.connect_options(),
            )
        )
        try:
            await asyncio.wait(
                {connecting, refused}, timeout=max(deadline - time.monotonic(), 0.0), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            first = False
            if not connecting.done():
                connecting.cancel()
                await asyncio.gather(connecting, return_exceptions=True)
                with contextlib.suppress(Exception):
                    await nc.close()
        if connecting.done() and not connecting.cancelled():
            failed = connecting.exception()
            if failed is None:
                return nc
            with contextlib.suppress(Exception):
                await nc.close()
            raise failed  # what connect() raised, e.g. for a bad credentials file
        if refused.done():
            e = refused.result()
            if isinstance(e, ssl.SSLError):
                raise ConnectionError(self._tls_failed(e)) from e
            raise PermissionError(
                f"NATS at {self.nats_url} refused the worker's credentials ({auth.describe()}): {e}"
            ) from e
        why = f" (last error: {last[0]!r})" if last else ""
        raise RuntimeError(f"cannot connect to NATS at {self.nats_url} within {self.stream_wait:g}s{why}")

    def _tls_failed(self, e: BaseException) -> str:
        return (
            f"TLS with NATS at {self.nats_url} failed: {e} (the CA is nats_tls_ca= or ${NATS_TLS_CA_ENV}; "
            f"a server that verifies clients also wants nats_tls_cert= and nats_tls_key=)"
        )

    async def _require_tls(self, deadline: float) -> None:
        """With a CA, asks the server whether it requires TLS before connecting: nats-py
        would otherwise send the credentials in clear to a server that does not."""
        while True:
            assert self._auth.tls is not None
            try:
                requires = await _server_requires_tls(self.nats_url, self._auth.tls, self.nats_timeout)
            except ssl.SSLError as e:
                raise ConnectionError(self._tls_failed(e)) from e
            if requires:
                return
            if requires is False:
                raise ConnectionError(
                    f"NATS at {self.nats_url} does not require TLS, but a TLS CA is set "
                    f"({self._auth.tls_source}): not connecting without TLS"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot connect to NATS at {self.nats_url} within {self.stream_wait:g}s")
            await asyncio.sleep(0.5)

    async def _setup(self) -> None:
        assert self._nc is not None
        self._js = self._nc.jetstream(timeout=self.nats_timeout)
        self._jsm = self._nc.jsm(timeout=self.nats_timeout)
        await self._wait_for_streams()
        # Cancel signals and running-requests first, so none for a task we are about
        # to run is missed.
        # A task id is one subject token: `*` gets every signal, and is what a worker's
        # NATS user may subscribe to (deploy/nats-permissions.conf).
        self._cancel_sub = await self._nc.subscribe("taskwire.cancel.*", cb=self._on_cancel)
        self._running_sub = await self._nc.subscribe("taskwire.running.*", cb=self._on_running)
        unserved = sorted(set(self.max_running) - set(self._handlers))
        if unserved:
            log.warning("max_running names kinds this worker has no handler for (ignored): %s", unserved)
        unserved = sorted(set(self.max_rate) - set(self._handlers))
        if unserved:
            log.warning("max_rate names kinds this worker has no handler for (ignored): %s", unserved)
        for kind in self.kinds:
            # Only the kinds' own consumers: read, created (or updated to these
            # settings) by name, then pulled; no other JetStream call (no stream, no
            # other consumer).
            name = kind_consumer(kind)
            max_ack_pending = await self._max_ack_pending(kind, name)
            config = js_api.ConsumerConfig(
                durable_name=name,
                filter_subject=f"taskwire.tasks.{kind}",
                deliver_policy=js_api.DeliverPolicy.ALL,
                ack_policy=js_api.AckPolicy.EXPLICIT,
                ack_wait=self.ack_wait,
                max_deliver=self.max_deliver,
                max_ack_pending=max_ack_pending,
            )
            try:
                await self._js.add_consumer(TASKS_STREAM, config=config)
            except nats.errors.TimeoutError as e:
                # A request NATS's permissions refuse is dropped: it times out.
                raise self._no_answer("creating", name, kind) from e
            if max_ack_pending != UNLIMITED_RUNNING:
                log.info("kind %s: at most %d task(s) run at once across all workers", kind, max_ack_pending)
            if self.max_rate.get(kind, 0) > 0:
                log.info("kind %s: at most %d task(s) started per second by this worker", kind, self.max_rate[kind])
            self._subs[kind] = await self._js.pull_subscribe_bind(durable=name, stream=TASKS_STREAM)
        self._slots = _Slots(self.concurrency)

    async def _max_ack_pending(self, kind: str, name: str) -> int:
        """The ``max_ack_pending`` the kind's consumer gets (docs/protocol.md §3): the
        kind's ``max_running`` if given (0: no limit, 10 000); else what the consumer
        has now, so that a limit another worker set stays; 10 000 for a new consumer."""
        limit = self.max_running.get(kind)
        if limit is not None:
            return limit if limit > 0 else UNLIMITED_RUNNING
        try:
            info = await self._js.consumer_info(TASKS_STREAM, name)
        except nats.js.errors.NotFoundError:
            return UNLIMITED_RUNNING
        except nats.errors.TimeoutError as e:
            raise self._no_answer("reading", name, kind) from e
        current = info.config.max_ack_pending
        return UNLIMITED_RUNNING if current is None else int(current)

    def _no_answer(self, doing: str, name: str, kind: str) -> RuntimeError:
        return RuntimeError(
            f"{doing} the consumer {name} of kind {kind} on {TASKS_STREAM} got no answer from "
            f"{self.nats_url} within {self.nats_timeout:g}s; if NATS confines the worker's user "
            f"({self._auth.describe()}), its permissions must name the kind: "
            f"`taskwire nats-permissions --kind {kind} ...`"
        )

    async def _wait_for_streams(self) -> None:
        deadline = time.monotonic() + self.stream_wait
        while True:
            try:
                for stream in (TASKS_STREAM, EVENTS_STREAM, DLQ_STREAM):
                    await self._js.stream_info(stream)
                return
            except (nats.js.errors.NotFoundError, nats.errors.TimeoutError) as e:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"taskwire's streams do not exist on {self.nats_url} ({e!r}); start the "
                        "api first (it creates them; so do Rust services run without "
                        "--nats-manage-streams false)"
                    ) from e
                await asyncio.sleep(0.5)

    async def _on_nats_error(self, e: Exception) -> None:
        log.warning("NATS: %r", e)

    async def _on_disconnected(self) -> None:
        if not self._closing:
            log.warning("disconnected from NATS; reconnecting")

    async def _on_reconnected(self) -> None:
        log.info("reconnected to NATS")

    def shutdown(self) -> None:
        """Asks :meth:`run` to stop pulling and drain (idempotent, signal-safe)."""
        self._shutdown.set()

    async def run(self, *, install_signal_handlers: bool = True) -> None:
        """Starts (if needed) and pulls tasks until :meth:`shutdown` or SIGINT/SIGTERM;
        then lets running handlers finish for ``shutdown_grace`` seconds and hands the
        rest back (RETRYING ``WORKER_SHUTDOWN``, then a plain ``-NAK``)."""
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if install_signal_handlers:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, self.shutdown)
                    installed.append(sig)
        try:
            if self._nc is None:
                starting = asyncio.create_task(self.start())
                stopping = asyncio.create_task(self._shutdown.wait())
                await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                stopping.cancel()
                if not starting.done():  # shut down while starting
                    starting.cancel()
                    await asyncio.gather(starting, return_exceptions=True)
                    await self.close()
                    return
                starting.result()  # raises if the start failed
            await self._serve()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    async def _serve(self) -> None:
        kinds = self.kinds
        fair_share = max(self.concurrency // len(kinds), 1)
        pullers = [asyncio.create_task(self._pull_loop(k, fair_share), name=f"pull {k}") for k in kinds]
        try:
            await self._shutdown.wait()
        finally:
            for p in pullers:
                p.cancel()
            await asyncio.gather(*pullers, return_exceptions=True)
            await self._drain()
            log.info("worker stopped")

    async def _drain(self) -> None:
        if self._attempts:
            _, pending = await asyncio.wait(set(self._attempts), timeout=self.shutdown_grace)
            if pending:
                log.info("grace period over; handing %d task(s) back", len(pending))
                self._hand_back.set()
                await asyncio.wait(pending, timeout=self.nats_timeout * 4 + 5)
        await self.close()

    async def close(self) -> None:
        """Closes the NATS connection (after flushing acks)."""
        nc, self._nc = self._nc, None
        if nc is None:
            return
        self._closing = True
        with contextlib.suppress(Exception):
            await nc.flush(timeout=2)
        with contextlib.suppress(Exception):
            await nc.close()

    # -- cancel signals and running-requests ----------------------------------------

    async def _on_cancel(self, msg: Msg) -> None:
        task_id = msg.subject.removeprefix("taskwire.cancel.")
        reg = self._running.get(task_id)
        if reg is not None:
            log.info("task %s: cancel signal", task_id)
            reg.stop.set()

    async def _on_running(self, msg: Msg) -> None:
        """Answers "who runs this task?" with the attempt number, if an attempt of the
        task runs here and has claimed it; says nothing otherwise (the asker's timeout
        is the "no")."""
        task_id = msg.subject.removeprefix("taskwire.running.")
        reg = self._running.get(task_id)
        if reg is None or reg.attempt is None or not msg.reply or self._nc is None:
            return
        try:
            await self._nc.publish(msg.reply, str(reg.attempt).encode())
        except Exception as e:
            log.debug("task %s: cannot answer a running-request (%r)", task_id, e)

    async def _ask_running(self, task_id: str) -> Optional[int]:
        """The attempt a live worker says it runs of the task, or None if none answered
        within ``ASK_WAIT`` (or NATS could not be asked, or the answer is no number)."""
        if self._nc is None:
            return None
        try:
            reply = await self._nc.request(f"taskwire.running.{task_id}", b"", timeout=ASK_WAIT)
            text = reply.data.decode("ascii")
        except Exception:  # timeout, no responders, NATS error, not ASCII
            return None
        return int(text) if text.isdigit() else None

    async def _still_running(self, task_id: str) -> bool:
        """Step 2, for a redelivery: whether the task's newest attempt still runs, here
        or on a live worker that says so. JetStream redelivers a task whose heartbeats
        did not arrive in time: its worker died, or only the heartbeats were lost; only
        in the first case may this delivery take the task over."""
        reg = self._running.get(task_id)
        if reg is not None and reg.attempt is not None:
            log.info("task %s: redelivered while its attempt %d runs here; leaving it", task_id, reg.attempt)
            return True
        try:
            last = await self._last_event(task_id)
        except _Unavailable:
            return False  # the claim decides
        if last is None or last[1].state != task_pb2.TASK_STATE_RUNNING:
            return False  # not running (queued, retrying, finished): the claim decides
        attempt = last[1].attempt
        if await self._ask_running(task_id) != attempt:
            return False
        log.info(
            "task %s: redelivered while its attempt %d runs on a live worker; leaving it", task_id, attempt
        )
        return True

    # -- pulling --------------------------------------------------------------------

    async def _pull_loop(self, kind: str, fair_share: int) -> None:
        """Pulls one kind's tasks, fetching only as many as there are free slots (and,
        with ``max_rate``, start tokens): a fetched task's ack_wait is already running."""
        sub = self._subs[kind]
        slots = self._slots
        assert slots is not None
        rate = _StartRate(self.max_rate[kind]) if self.max_rate.get(kind, 0) > 0 else None
        while not self._shutdown.is_set():
            most = fair_share
            if rate is not None:
                most = min(most, await rate.available())
            n = await slots.acquire(most)
            try:
                msgs = await sub.fetch(batch=n, timeout=1.0)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                await slots.release(n)
                continue
            except asyncio.CancelledError:
                await slots.release(n)
                raise
            except Exception as e:  # NATS down, reconnecting, ...
                await slots.release(n)
                log.warning("pull for %s failed (%r); retrying", kind, e)
                await asyncio.sleep(0.5)
                continue
            if rate is not None:
                rate.spend(len(msgs))
            await slots.release(n - len(msgs))
            for msg in msgs:
                t = asyncio.create_task(self._process(msg))
                self._attempts.add(t)
                t.add_done_callback(self._attempt_done)

    def _attempt_done(self, t: "asyncio.Task[None]") -> None:
        self._attempts.discard(t)
        if self._slots is not None:
            asyncio.ensure_future(self._slots.release(1))
        if not t.cancelled() and t.exception() is not None:
            log.error("attempt crashed", exc_info=t.exception())

    # -- acks -----------------------------------------------------------------------

    async def _reply(self, msg: Msg, payload: bytes) -> None:
        if not msg.reply:
            return
        try:
            assert self._nc is not None
            await self._nc.publish(msg.reply, payload)
        except Exception as e:
            # The outcome is stored: a redelivery sees it and acks then.
            log.warning("ack %r failed: %r", payload, e)

    async def _ack(self, msg: Msg) -> None:
        await self._reply(msg, b"+ACK")

    async def _nak(self, msg: Msg, delay: Optional[float] = None) -> None:
        if delay is None:
            await self._reply(msg, b"-NAK")
        else:
            ns = int(delay * 1_000_000_000)
            await self._reply(msg, b'-NAK {"delay":%d}' % ns)

    async def _wpi(self, msg: Msg) -> None:
        await self._reply(msg, b"+WPI")

    async def _term(self, msg: Msg) -> None:
        await self._reply(msg, b"+TERM")

    # -- history --------------------------------------------------------------------

    async def _last_event(self, task_id: str) -> Optional[tuple[int, messages_pb2.Event]]:
        """The task's newest event and its seq, or None if it has none."""
        try:
            raw = await self._jsm.get_last_msg(EVENTS_STREAM, f"taskwire.events.{task_id}")
        except nats.js.errors.APIError as e:
            if e.err_code == ERR_NO_MESSAGE_FOUND:
                return None
            raise _Unavailable(str(e)) from e
        except (nats.errors.Error, asyncio.TimeoutError, OSError) as e:
            raise _Unavailable(repr(e)) from e
        ev = messages_pb2.Event.FromString(raw.data or b"")
        return raw.seq, ev

    # -- one delivery ---------------------------------------------------------------

    async def _process(self, msg: Msg) -> None:
        try:
            delivered = int(msg.metadata.num_delivered)
            body = messages_pb2.TaskMessage.FromString(msg.data)
            task_id = body.task_id
            if str(uuid.UUID(task_id)) != task_id:
                raise ValueError(f"task_id {task_id!r} is not a lower-case hyphenated UUID")
        except Exception as e:
            log.error("bad task message on %s (%r); terminating it", msg.subject, e)
            await self._term(msg)
            return
        if delivered > 1 and await self._still_running(task_id):
            return  # no ack, no NAK: the live attempt's heartbeats and ack go on
        # Registered only now: a redelivery left to a live attempt here must not shadow
        # that attempt's registration.
        reg = _Registration(asyncio.Event())
        self._running[task_id] = reg
        # The attempt's place in the task's trace (docs/protocol.md): its events carry it.
        # Its attempt number is known once it has claimed the task.
        trace = _trace.start_attempt(body.traceparent, f"attempt {body.kind}", {"task_id": task_id, "kind": body.kind})
        try:
            await self._run_attempt(msg, task_id, body, reg, trace)
        finally:
            trace.end()
            if self._running.get(task_id) is reg:
                del self._running[task_id]

    async def _claim(
        self, msg: Msg, task_id: str, body: messages_pb2.TaskMessage, reg: _Registration, trace: _trace.AttemptTrace
    ) -> Optional[_EventWriter]:
        """Steps 3-6: read the history, skip finished tasks, number the attempt, fail
        spent ones, append RUNNING. The returned writer carries the attempt number.
        None: nothing to run (handled, or left for redelivery).

        A parent's steps, as the Rust workers take them: the message of its first step
        has nothing left to do once the task WAITS for its children or is in its
        fan-in step (an event with ``fan_in_of``): it is acked, never run again. A
        fan-in message (``TaskMessage.fan_in``) runs only while the history ends with
        the WAITING event it follows (``waiting_seq``: attempt 1) or with that fan-in
        step's own events (``fan_in_of`` = ``waiting_seq``: the next attempt);
        otherwise it is acked. Every event of a fan-in step carries ``fan_in_of``."""
        waiting = body.fan_in.waiting_seq if body.HasField("fan_in") else 0
        for _ in range(CLAIM_TRIES):
            try:
                last = await self._last_event(task_id)
            except _Unavailable as e:
                log.warning("task %s: cannot read its history (%s); retrying later", task_id, e)
                await self._nak(msg, 1.0)
                return None
            last_seq = last[0] if last else 0
            if last is not None and last[1].state in _TERMINAL:
                ev = last[1]
                if ev.state == task_pb2.TASK_STATE_FAILED:
                    if not await self._dead_letter(body, ev.error if ev.HasField("error") else None):
                        return None
                log.info("task %s: already finished; acking", task_id)
                await self._ack(msg)
                return None
            if last is not None and _step_done(waiting, last[0], last[1]):
                log.info(
                    "task %s: this message's step is over (%s at seq %d); acking",
                    task_id,
                    task_pb2.TaskState.Name(last[1].state),
                    last[0],
                )
                await self._ack(msg)
                return None
            # Attempts are counted in the history, not in deliveries: a redelivery left
            # to a live attempt, or a claim that failed, spends none. A fan-in step's
            # count from 1 again after the WAITING event.
            if last is None or last[1].state == task_pb2.TASK_STATE_WAITING:
                attempt = 1
            else:
                attempt = last[1].attempt + 1
            if attempt > body.max_attempts:
                # The last attempt's worker died (or handed it back): the task fails,
                # recorded under that attempt's number.
                trace.set_attribute("attempt", body.max_attempts)
                writer = _EventWriter(
                    self._js, task_id, body.kind, body.max_attempts, last_seq, self.nats_timeout, trace, waiting
                )
                f = TaskFailure(
                    f"attempt {body.max_attempts} of {body.max_attempts} was lost with its worker",
                    code="ATTEMPTS_EXHAUSTED",
                    retryable=True,
                )
                await self._fail(msg, writer, body, f)
                return None
            writer = _EventWriter(
                self._js, task_id, body.kind, attempt, last_seq, self.nats_timeout, trace, waiting, self._last_event
            )
            # The fan-in's share of its tree's progress starts at 0.
            progress = task_pb2.Progress(fraction=0.0, message="fan-in") if waiting and attempt == 1 else None
            try:
                # The claim names this worker (Event.worker): the attempt history shows it.
                await writer.write(task_pb2.TASK_STATE_RUNNING, worker=worker_name(), progress=progress)
            except _Conflict:
                continue
            except _Unavailable as e:
                log.warning("task %s: cannot append RUNNING (%s); retrying later", task_id, e)
                await self._nak(msg, 1.0)
                return None
            # Claimed: from now on running-requests for the task are answered, and the
            # attempt's writes continue after events of its own they did not know of.
            writer.claimed = True
            reg.attempt = attempt
            trace.set_attribute("attempt", attempt)
            return writer
        # Someone keeps writing: try again in a second (docs/protocol.md §5 step 6).
        await self._nak(msg, 1.0)
        return None

    async def _run_attempt(
        self,
        msg: Msg,
        task_id: str,
        body: messages_pb2.TaskMessage,
        reg: _Registration,
        trace: _trace.AttemptTrace,
    ) -> None:
        writer = await self._claim(msg, task_id, body, reg, trace)
        if writer is None:
            return
        attempt, stop = writer.attempt, reg.stop
        handler = self._handlers.get(body.kind)
        if handler is None:
            f = TaskFailure.fatal(f"no handler for kind {body.kind}", code="NO_HANDLER")
            await self._fail(msg, writer, body, f)
            return
        if body.HasField("timeout"):
            timeout = max(body.timeout.ToTimedelta().total_seconds(), 0.0)
        else:
            timeout = self.default_timeout
        ctx = TaskContext(
            task_id=task_id,
            kind=body.kind,
            input=from_value(body.input) if body.HasField("input") else None,
            labels=dict(body.labels),
            attempt=attempt,
            max_attempts=body.max_attempts,
            deadline=time.monotonic() + timeout,
            stop=stop,
            writer=writer,
            traceparent=trace.traceparent,
            fan_in=body.fan_in if body.HasField("fan_in") else None,
        )
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        running = asyncio.create_task(self._call(handler, ctx, trace))
        stopped = asyncio.create_task(stop.wait())
        hand_back = asyncio.create_task(self._hand_back.wait())
        done: set[asyncio.Future[Any]] = set()
        try:
            done, _ = await asyncio.wait(
                {running, stopped, hand_back}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            finished = running.done()
            # Whatever ended the attempt, the handler stops now and reports nothing more.
            was_stopped = stop.is_set()
            stop.set()
            for t in (heartbeat, stopped, hand_back):
                t.cancel()
            if not finished:
                running.cancel()
                await asyncio.wait({running}, timeout=1.0)
            await asyncio.gather(heartbeat, stopped, hand_back, return_exceptions=True)

        if running in done and not was_stopped:
            result = running.result()
            if isinstance(result, _Output) and ctx._spawned:
                await self._wait(msg, writer, body, attempt, ctx, result.value)
            elif isinstance(result, _Output):
                await self._succeed(msg, writer, result.value)
            elif isinstance(result, TaskFailure):
                await self._retry_or_fail(msg, writer, body, attempt, result)
            else:  # _StoppedResult
                trace.finish("stopped")
                await self._ack_if_finished(msg, task_id)
        elif was_stopped or stopped in done:
            trace.finish("stopped")
            await self._ack_if_finished(msg, task_id)
        elif hand_back in done:
            f = TaskFailure("the worker shut down", code="WORKER_SHUTDOWN", retryable=True)
            try:
                await self._write_outcome(writer, task_pb2.TASK_STATE_RETRYING, error=f.to_proto())
            except (_Conflict, _Unavailable):
                return  # redelivered after ack_wait
            await self._nak(msg)
        else:
            f = TaskFailure(
                f"attempt {attempt} ran past its {_fmt_seconds(timeout)} timeout",
                code="DEADLINE_EXCEEDED",
                retryable=True,
            )
            await self._retry_or_fail(msg, writer, body, attempt, f)

    async def _call(self, handler: Handler, ctx: TaskContext, trace: _trace.AttemptTrace) -> "_Result":
        """Runs the handler (in the attempt's span, if it has one) and turns what it
        did into a result."""
        try:
            with trace.activate():
                value = await handler(ctx)
        except Stopped:
            return _StoppedResult()
        except TaskFailure as f:
            return f
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("task %s: handler crashed", ctx.task_id)
            trace.record_exception(e)
            return TaskFailure(f"handler panicked: {type(e).__name__}: {e}", code="PANIC", retryable=True)
        try:
            return _Output(to_value(value))
        except (TypeError, ValueError) as e:
            return TaskFailure.fatal(f"the handler's output is not JSON: {e}")

    async def _heartbeat(self, msg: Msg) -> None:
        every = self.ack_wait / 3
        while True:
            await asyncio.sleep(every)
            await self._wpi(msg)

    # -- outcomes -------------------------------------------------------------------

    async def _write_outcome(self, writer: _EventWriter, state: int, **fields: Any) -> int:
        """Stores an outcome event: 3 tries 200ms apart on errors; a conflict at once."""
        last: Optional[Exception] = None
        for i in range(3):
            try:
                seq = await writer.write(state, **fields)
                _trace_outcome(writer.trace, state, fields.get("error"))
                return seq
            except _Conflict:
                raise
            except _Unavailable as e:
                last = e
                log.warning("task %s: outcome event not stored (%s); retrying", writer.task_id, e)
                if i < 2:
                    await asyncio.sleep(0.2)
        raise _Unavailable(str(last))

    async def _succeed(self, msg: Msg, writer: _EventWriter, output: Any) -> None:
        try:
            await self._write_outcome(
                writer,
                task_pb2.TASK_STATE_SUCCEEDED,
                progress=task_pb2.Progress(fraction=1.0, message="done"),
                output=output,
            )
        except _Conflict:
            await self._ack_if_finished(msg, writer.task_id)
            return
        except _Unavailable:
            return  # no ack, no NAK: redelivered after ack_wait
        await self._ack(msg)

    async def _wait(
        self,
        msg: Msg,
        writer: _EventWriter,
        body: messages_pb2.TaskMessage,
        attempt: int,
        ctx: TaskContext,
        output: Any,
    ) -> None:
        """A step that returned with children: the WAITING event carries them (the api
        creates them once it is stored) and the step's output, then the ack. Children
        whose messages would not fit in one event fail the task (CHILDREN_TOO_LARGE)."""
        children = list(ctx._spawned)
        n = len(children)
        size = sum(c.ByteSize() for c in children)
        if size > MAX_CHILDREN_BYTES:
            f = TaskFailure.fatal(
                f"the {n} children started take {size} bytes; at most {MAX_CHILDREN_BYTES} fit in one event",
                code="CHILDREN_TOO_LARGE",
            )
            await self._retry_or_fail(msg, writer, body, attempt, f)
            return
        try:
            await self._write_outcome(
                writer,
                task_pb2.TASK_STATE_WAITING,
                progress=task_pb2.Progress(fraction=ctx._progress, message=f"waiting for {n} children"),
                output=output,
                children=children,
                fan_in_kind=ctx._fan_in_kind,
            )
        except _Conflict:
            await self._ack_if_finished(msg, writer.task_id)
            return
        except _Unavailable:
            return  # no ack, no NAK: redelivered after ack_wait
        log.info("task %s: waits for its %d children", writer.task_id, n)
        await self._ack(msg)

    async def _retry_or_fail(
        self, msg: Msg, writer: _EventWriter, body: messages_pb2.TaskMessage, attempt: int, f: TaskFailure
    ) -> None:
        if not f.retryable or attempt >= body.max_attempts:
            await self._fail(msg, writer, body, f)
            return
        try:
            await self._write_outcome(writer, task_pb2.TASK_STATE_RETRYING, error=f.to_proto())
        except _Conflict:
            await self._ack_if_finished(msg, writer.task_id)
            return
        except _Unavailable:
            return
        delay = backoff(attempt, self.backoff_base, self.backoff_max)
        log.info("task %s: attempt %d failed (%s); retrying in %.2fs", writer.task_id, attempt, f, delay)
        await self._nak(msg, delay)

    async def _fail(self, msg: Msg, writer: _EventWriter, body: messages_pb2.TaskMessage, f: TaskFailure) -> None:
        """Step 11: FAILED, then the dead letter, then the ack."""
        error = f.to_proto()
        try:
            await self._write_outcome(writer, task_pb2.TASK_STATE_FAILED, error=error)
        except _Conflict:
            await self._ack_if_finished(msg, writer.task_id)
            return
        except _Unavailable:
            return
        log.warning("task %s failed: %s", writer.task_id, f)
        if await self._dead_letter(body, error):
            await self._ack(msg)

    async def _dead_letter(self, body: messages_pb2.TaskMessage, error: Optional[task_pb2.TaskError]) -> bool:
        """Copies the task to ``taskwire.dlq.<kind>``; False if that failed (then the
        message is left for redelivery, which finds FAILED and sends it again). Its
        ``Nats-Msg-Id`` is the run's (:func:`task_msg_id`), or a fan-in step's
        (:func:`message_id`): a retried run that fails again within the duplicate
        window gets a copy of its own."""
        headers = {"Nats-Msg-Id": message_id(body), SCHEMA_HEADER: SCHEMA_VERSION}
        if error is not None:
            headers["Taskwire-Error-Code"] = error.code
            headers["Taskwire-Error-Retryable"] = "true" if error.retryable else "false"
        try:
            await self._js.publish(
                f"taskwire.dlq.{body.kind}", body.SerializeToString(), timeout=self.nats_timeout, headers=headers
            )
            return True
        except Exception as e:
            log.warning("task %s: dead-letter publish failed (%r); the task is redelivered", body.task_id, e)
            return False

    async def _ack_if_finished(self, msg: Msg, task_id: str) -> None:
        """After losing a write: ack only if the history is finished (e.g. cancelled);
        if another worker took the task over, its message must stay."""
        try:
            last = await self._last_event(task_id)
        except _Unavailable as e:
            log.warning("task %s: cannot read its history (%s); leaving the message", task_id, e)
            return
        if last is not None and last[1].state in _TERMINAL:
            log.info("task %s: finished elsewhere (%s); acking", task_id, task_pb2.TaskState.Name(last[1].state))
            await self._ack(msg)
        else:
            log.info("task %s: taken over by another worker; leaving its message", task_id)


def _step_done(waiting: int, seq: int, ev: messages_pb2.Event) -> bool:
    """Whether the step a message runs is over, given the task's newest event (at
    ``seq``; not terminal): for a first step's message (``waiting`` 0), once the task
    WAITS or is in a fan-in step; for a fan-in message (``waiting`` = the seq of the
    WAITING event it follows), unless the history ends with that WAITING event or with
    an event of that fan-in step."""
    if waiting == 0:
        return ev.state == task_pb2.TASK_STATE_WAITING or ev.fan_in_of != 0
    following = ev.state == task_pb2.TASK_STATE_WAITING and seq == waiting
    return not (following or ev.fan_in_of == waiting)


def _trace_outcome(trace: _trace.AttemptTrace, state: int, error: Optional[task_pb2.TaskError]) -> None:
    """Records a stored outcome on the attempt's span, named as the Rust worker names it."""
    if state == task_pb2.TASK_STATE_SUCCEEDED:
        trace.finish("succeeded")
        return
    if state == task_pb2.TASK_STATE_WAITING:
        trace.finish("waiting")
        return
    why = f"{error.code}: {error.message}" if error is not None else ""
    if state == task_pb2.TASK_STATE_FAILED:
        trace.finish("failed", error=why)
    elif error is not None and error.code == "WORKER_SHUTDOWN":
        trace.finish("handed_back", error=why)
    else:
        trace.finish("retried", error=why)


@dataclass
class _Output:
    value: Any


class _StoppedResult:
    pass


_Result = Any  # _Output | TaskFailure | _StoppedResult


def _fmt_seconds(s: float) -> str:
    """A duration as Rust's ``Debug`` for ``Duration`` prints it (``500ms``, ``1.5s``,
    ``3600s``), so error messages read the same from Python and Rust workers."""
    ns = max(int(round(s * 1e9)), 0)

    def fmt(value: int, unit: int, suffix: str) -> str:
        whole, frac = divmod(value, unit)
        digits = len(str(unit)) - 1
        text = f"{frac:0{digits}d}".rstrip("0") if frac else ""
        return f"{whole}.{text}{suffix}" if text else f"{whole}{suffix}"

    if ns >= 1_000_000_000:
        return fmt(ns, 1_000_000_000, "s")
    if ns >= 1_000_000:
        return fmt(ns, 1_000_000, "ms")
    if ns >= 1_000:
        return fmt(ns, 1_000, "µs")
    return f"{ns}ns"


def main_args(argv: Optional[list[str]] = None, description: str = "taskwire Python worker") -> argparse.Namespace:
    """Command-line flags shared by worker programs (see examples/)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--nats-url", default="nats://127.0.0.1:4222", help="NATS URL (taskwire dev writes it to DATA_DIR/nats-url)")
    p.add_argument("--ack-wait", type=float, default=30.0, help="seconds; the same as the other workers of these kinds")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--backoff-base", type=float, default=1.0, help="seconds")
    p.add_argument("--backoff-max", type=float, default=300.0, help="seconds")
    p.add_argument("--default-timeout", type=float, default=3600.0, help="seconds per attempt")
    p.add_argument("--shutdown-grace", type=float, default=20.0, help="seconds")
    p.add_argument(
        "--max-running",
        action="append",
        default=[],
        type=_parse_kind_limits,
        metavar="KIND=N",
        help="at most N tasks of KIND run at once across all workers (repeatable or comma-separated; "
        "N = 0 lifts a limit); a kind not named keeps the limit it has",
    )
    p.add_argument(
        "--max-rate",
        action="append",
        default=[],
        type=_parse_kind_limits,
        metavar="KIND=N",
        help="at most N tasks of KIND started per second by this worker, in bursts of up to N "
        "(repeatable or comma-separated; N = 0: no limit); per worker process",
    )
    # NATS credentials and TLS, as the Rust workers take them; unset flags fall back to
    # the same environment variables (in Worker), so a password need not be a flag.
    p.add_argument("--nats-user", help=f"NATS user, with --nats-password [env: {NATS_USER_ENV}]")
    p.add_argument("--nats-password", help=f"NATS password of --nats-user [env: {NATS_PASSWORD_ENV}]")
    p.add_argument("--nats-creds", help=f"NATS credentials file (user JWT and nkey seed) [env: {NATS_CREDS_ENV}]")
    p.add_argument("--nats-nkey", help=f"file holding a NATS nkey seed (SU...) [env: {NATS_NKEY_ENV}]")
    p.add_argument("--nats-tls-ca", help=f"PEM CA of the NATS servers' certificates: TLS [env: {NATS_TLS_CA_ENV}]")
    p.add_argument("--nats-tls-cert", help=f"PEM client certificate, with --nats-tls-key [env: {NATS_TLS_CERT_ENV}]")
    p.add_argument("--nats-tls-key", help=f"PEM key of --nats-tls-cert [env: {NATS_TLS_KEY_ENV}]")
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args


def from_args(args: argparse.Namespace) -> Worker:
    return Worker(
        args.nats_url,
        ack_wait=args.ack_wait,
        concurrency=args.concurrency,
        backoff_base=args.backoff_base,
        backoff_max=args.backoff_max,
        default_timeout=args.default_timeout,
        shutdown_grace=args.shutdown_grace,
        # The last KIND=N given for a kind wins, as with the Rust flag.
        max_running=dict(pair for group in getattr(args, "max_running", None) or [] for pair in group),
        max_rate=dict(pair for group in getattr(args, "max_rate", None) or [] for pair in group),
        nats_user=getattr(args, "nats_user", None),
        nats_password=getattr(args, "nats_password", None),
        nats_creds=getattr(args, "nats_creds", None),
        nats_nkey=getattr(args, "nats_nkey", None),
        nats_tls_ca=getattr(args, "nats_tls_ca", None),
        nats_tls_cert=getattr(args, "nats_tls_cert", None),
        nats_tls_key=getattr(args, "nats_tls_key", None),
    )

"""A thin, typed client for taskwire's gRPC services (``taskwire.v1``).

::

    from taskwire import Client

    with Client("127.0.0.1:50051") as tw:
        task_id = tw.submit("demo.sleep", {"seconds": 2, "steps": 4})
        for event in tw.watch(task_id):          # resumes by itself after a drop
            print(event.seq, event.progress.fraction, event.progress.message)
        print(tw.status(task_id).state)

:class:`AsyncClient` has the same methods for asyncio (``grpc.aio``); its ``watch``
is an async iterator. Every failed call raises :class:`TaskwireError`, which carries
the gRPC status code. ``submit`` emits a :class:`TaskwireWarning` (``warnings.warn``)
when the server accepts a task with a warning, e.g. that no worker serves its kind.

A server run with ``--auth keys`` wants an API key: ``Client(address, token=...)``
(default: the ``TASKWIRE_TOKEN`` environment variable) sends ``authorization: Bearer
<token>`` with every call, watches included. ``https://`` addresses use TLS, checked
against the system's roots or the PEM CA file given as ``ca=`` (default: the
``TASKWIRE_CA`` environment variable), as the ``taskwire`` CLI does.

``submit(..., delay=90)`` (seconds or a timedelta) or ``submit(..., run_at=<an aware
datetime>)`` delays a task: it is SCHEDULED until then (``Task.run_at``), then QUEUED,
and can be cancelled before it starts.

``submit_tasks([TaskSpec(...), ...])`` submits up to 1,000 tasks in one call and
returns a :class:`SubmitResult` per task, in order: a task the server refuses carries
its error code and message there (nothing is raised for it) and the others are
accepted; only a failure of the whole call raises :class:`TaskwireError`.

Task graphs: ``submit(..., parent_id=...)`` adds a child to a task (its
``child_failure`` says what its failure does to the parent: ``"fail_parent"``,
``"ignore"`` or ``"continue"``; ``cancel_policy`` what cancelling it does to its own
children: ``"cascade"`` or ``"abandon"``); ``list(parent_id=...)`` lists a task's
children; a parent's ``Task.children`` counts them; ``watch(task_id, tree=True)``
follows the task and every descendant in one stream. Workers start children with
``TaskContext.spawn`` (:mod:`taskwire.worker`).

Dead letters: ``retry(task_id)`` starts a new run of a FAILED task (same id,
``Task.run`` + 1); ``retry_all(...)`` / ``discard_all(...)`` retry or delete every FAILED
task matching a filter (a dry run, then exactly the tasks it counted); ``attempts(task_id)``
lists every run's attempts; ``watch_tasks(state="FAILED")`` hears each dead-lettering.

A submit starts or continues a trace: it sends ``traceparent`` (W3C trace context) as
gRPC metadata, the one given, else the current OpenTelemetry span's when the
``opentelemetry`` package is installed and a span is current (it is optional).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import random
import threading
import time
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import grpc
import grpc.aio
from google.protobuf import duration_pb2, timestamp_pb2

from . import _trace
from ._graph import PolicyLike, cancel_policy_value, child_failure_value
from .v1 import service_pb2, service_pb2_grpc, task_pb2
from .values import JSON, from_value, to_value

log = logging.getLogger("taskwire.client")

__all__ = [
    "AsyncClient",
    "AsyncTaskWatch",
    "BulkResult",
    "CancelPolicy",
    "ChildFailurePolicy",
    "Client",
    "JSON",
    "PolicyLike",
    "SubmitResult",
    "TERMINAL_STATES",
    "TaskSpec",
    "TaskSpecLike",
    "TaskWatch",
    "TaskwireError",
    "TaskwireWarning",
    "from_value",
    "is_terminal",
    "state_name",
    "to_value",
]

Task = task_pb2.Task
TaskEvent = task_pb2.TaskEvent
TaskState = task_pb2.TaskState
ListTasksResponse = service_pb2.ListTasksResponse
GetQueueStatsResponse = service_pb2.GetQueueStatsResponse
BulkTasksResponse = service_pb2.BulkTasksResponse
Attempt = task_pb2.Attempt
ChildFailurePolicy = task_pb2.ChildFailurePolicy
CancelPolicy = task_pb2.CancelPolicy
ChildCounts = task_pb2.ChildCounts

#: SUCCEEDED, FAILED and CANCELLED: a task in one of them never changes again.
TERMINAL_STATES: frozenset[int] = frozenset(
    {task_pb2.TASK_STATE_SUCCEEDED, task_pb2.TASK_STATE_FAILED, task_pb2.TASK_STATE_CANCELLED}
)

StateLike = Union[int, str, None]
Seconds = Union[float, int, datetime.timedelta]

# Short reconnect backoffs, so that a watch resumes soon after the server is back
# (gRPC's default grows to minutes).
_DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.enable_retries", 0),
)


class TaskwireError(Exception):
    """A taskwire call failed. ``code`` is the gRPC status code, ``details`` the
    server's message, ``method`` the RPC (e.g. ``TaskService/GetStatus``)."""

    def __init__(self, code: grpc.StatusCode, details: str, method: str = "") -> None:
        self.code = code
        self.details = details
        self.method = method
        where = f" ({method})" if method else ""
        super().__init__(f"{code.name}: {details}{where}")

    @classmethod
    def from_rpc_error(cls, err: grpc.RpcError, method: str = "") -> "TaskwireError":
        code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
        details = err.details() if hasattr(err, "details") else str(err)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "", method)


class TaskwireWarning(UserWarning):
    """The server accepted a submit but warned about it (``SubmitTaskResponse.warning``),
    e.g. no worker has ever served the task's kind (a typo?): the task waits, queued,
    until one starts. ``submit`` emits it with :func:`warnings.warn`; ``submit_task``
    returns the response, whose ``warning`` field carries the same text."""


def _warn_if_any(resp: service_pb2.SubmitTaskResponse) -> None:
    if resp.warning:
        # stacklevel 3: the line that called submit, not submit itself.
        warnings.warn(resp.warning, TaskwireWarning, stacklevel=3)


def is_terminal(state: int) -> bool:
    """Whether a ``TaskState`` value is SUCCEEDED, FAILED or CANCELLED."""
    return state in TERMINAL_STATES


def state_name(state: int) -> str:
    """``4`` -> ``"SUCCEEDED"``."""
    return task_pb2.TaskState.Name(state).removeprefix("TASK_STATE_")


def _state_value(state: StateLike) -> int:
    if state is None:
        return task_pb2.TASK_STATE_UNSPECIFIED
    if isinstance(state, str):
        name = state.upper()
        if not name.startswith("TASK_STATE_"):
            name = "TASK_STATE_" + name
        return task_pb2.TaskState.Value(name)
    return int(state)


def _seconds(value: Seconds) -> float:
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return float(value)


def _duration(value: Seconds) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromTimedelta(value if isinstance(value, datetime.timedelta) else datetime.timedelta(seconds=_seconds(value)))
    return d


def _timestamp(value: datetime.datetime, what: str) -> timestamp_pb2.Timestamp:
    """An aware datetime as a Timestamp. A naive one is refused (ValueError): whether
    it meant UTC or local time cannot be told, and a wrong guess is hours off."""
    if not isinstance(value, datetime.datetime):
        raise TypeError(f"{what} must be a datetime.datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{what} must be a timezone-aware datetime (e.g. datetime.now(timezone.utc) + ...), "
            f"not the naive {value.isoformat()}"
        )
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value.astimezone(datetime.timezone.utc))
    return ts


def _target(address: str) -> tuple[str, bool]:
    """``http://h:p`` / ``https://h:p`` / ``h:p`` -> (gRPC target, use TLS)."""
    if address.startswith("https://"):
        return address[len("https://") :].rstrip("/"), True
    if address.startswith("http://"):
        return address[len("http://") :].rstrip("/"), False
    return address, False


#: The environment variables that ``token`` and ``ca`` default to (the CLI reads them too).
TOKEN_ENV = "TASKWIRE_TOKEN"
CA_ENV = "TASKWIRE_CA"

PathLike = Union[str, "os.PathLike[str]"]


def _read_ca(path: PathLike, source: str) -> bytes:
    """The PEM bytes of a CA file (``source``: where the path came from, for errors)."""
    try:
        pem = Path(path).read_bytes()
    except OSError as e:
        raise OSError(e.errno, f"cannot read the CA file ({source}): {e.strerror}", str(path)) from e
    if b"-----BEGIN" not in pem:
        raise ValueError(f"the CA file {str(path)!r} ({source}) is not PEM (no -----BEGIN line)")
    return pem


def _channel_credentials(
    address: str,
    credentials: Optional[grpc.ChannelCredentials],
    ca: Optional[PathLike],
) -> Optional[grpc.ChannelCredentials]:
    """The credentials of a secure channel, or None for a plaintext one.

    TLS when ``credentials`` is given (used as is), the address is ``https://``, or a
    ``ca`` is given for a bare ``host:port``. The roots: ``ca`` if given, else
    ``$TASKWIRE_CA`` if set, else the system's. ``$TASKWIRE_CA`` never turns TLS on
    by itself (a plaintext address stays plaintext, as with the CLI); ``ca=`` with an
    ``http://`` address, or with ``credentials``, is a contradiction (ValueError)."""
    explicit = ca is not None and os.fspath(ca) != ""
    if credentials is not None:
        if explicit:
            raise ValueError("give either credentials= or ca=, not both (credentials carry their own roots)")
        return credentials
    _, https = _target(address)
    if explicit and address.startswith("http://"):
        raise ValueError(f"ca= given for the plaintext address {address!r}: use https://")
    if not (https or explicit):
        return None
    if explicit:
        assert ca is not None
        return grpc.ssl_channel_credentials(root_certificates=_read_ca(ca, "ca="))
    env_ca = os.environ.get(CA_ENV, "") if ca is None else ""
    if env_ca:
        return grpc.ssl_channel_credentials(root_certificates=_read_ca(env_ca, f"${CA_ENV}"))
    return grpc.ssl_channel_credentials()


def _call_metadata(token: Optional[str], metadata: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The metadata every call sends: ``metadata``, plus ``authorization: Bearer
    <token>`` when there is a token (``token``, else ``$TASKWIRE_TOKEN``; ``""`` = none).
    An ``authorization`` entry in ``metadata`` wins over the environment variable and
    may not be combined with ``token=``."""
    md = tuple(metadata)
    has_auth = any(k.lower() == "authorization" for k, _ in md)
    if token is None:
        token = "" if has_auth else os.environ.get(TOKEN_ENV, "")
        source = f"${TOKEN_ENV}"
    else:
        source = "token="
        if token and has_auth:
            raise ValueError("give either token= or an authorization entry in metadata=, not both")
    token = token.strip()
    if not token:
        return md
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        # (The token itself stays out of the message.)
        raise ValueError(f"the API key in {source} must be printable ASCII without spaces (just the key, no 'Bearer ')")
    return md + (("authorization", f"Bearer {token}"),)


def _submit_request(
    kind: str,
    input: JSON,
    idempotency_key: str,
    max_attempts: int,
    labels: Optional[Mapping[str, str]],
    task_timeout: Optional[Seconds],
    delay: Optional[Seconds] = None,
    run_at: Optional[datetime.datetime] = None,
    parent_id: str = "",
    child_failure: PolicyLike = None,
    cancel_policy: PolicyLike = None,
) -> service_pb2.SubmitTaskRequest:
    """The request of a submit; raises ValueError/TypeError, before any call, for a
    ``delay`` together with a ``run_at``, a ``run_at`` that is not an aware datetime,
    or a ``child_failure``/``cancel_policy`` that names no policy."""
    if delay is not None and run_at is not None:
        raise ValueError("give delay or run_at, not both")
    req = service_pb2.SubmitTaskRequest(
        kind=kind,
        input=to_value(input),
        idempotency_key=idempotency_key or "",
        max_attempts=max_attempts or 0,
        labels=dict(labels or {}),
        parent_id=parent_id or "",
        child_failure=child_failure_value(child_failure),  # type: ignore[arg-type]
        cancel_policy=cancel_policy_value(cancel_policy),  # type: ignore[arg-type]
    )
    if task_timeout is not None:
        req.timeout.CopyFrom(_duration(task_timeout))
    if delay is not None:
        req.delay.CopyFrom(_duration(delay))
    if run_at is not None:
        req.run_at.CopyFrom(_timestamp(run_at, "run_at"))
    return req


def _with_traceparent(
    metadata: tuple[tuple[str, str], ...], traceparent: Optional[str]
) -> tuple[tuple[str, str], ...]:
    """A submit's metadata: the client's, with the trace context to continue (see
    :func:`taskwire._trace.outgoing`) in place of any ``traceparent`` it had."""
    tp = _trace.outgoing(traceparent)
    if tp is None:
        return metadata
    return tuple(m for m in metadata if m[0].lower() != _trace.TRACEPARENT) + ((_trace.TRACEPARENT, tp),)


@dataclass(frozen=True)
class TaskSpec:
    """One task of a :meth:`Client.submit_tasks` batch, with the same fields and
    meanings as :meth:`Client.submit`'s arguments (``task_timeout`` per attempt;
    ``delay`` or ``run_at``, not both; ``parent_id``, ``child_failure`` and
    ``cancel_policy`` for a child). A plain dict with these keys works too; a
    dataclass gives the caller's type checker the names to check."""

    kind: str
    input: JSON = None
    idempotency_key: str = ""
    max_attempts: int = 0
    labels: Optional[Mapping[str, str]] = None
    task_timeout: Optional[Seconds] = None
    delay: Optional[Seconds] = None
    run_at: Optional[datetime.datetime] = None
    parent_id: str = ""
    child_failure: PolicyLike = None
    cancel_policy: PolicyLike = None


#: What :meth:`Client.submit_tasks` takes per task: a :class:`TaskSpec`, a dict of its
#: fields, or a ready ``SubmitTaskRequest`` (sent as is).
TaskSpecLike = Union[TaskSpec, Mapping[str, Any], service_pb2.SubmitTaskRequest]

# google.rpc.Code (SubmitTaskError.code) -> grpc.StatusCode: the same numbers.
_STATUS_CODES: dict[int, grpc.StatusCode] = {c.value[0]: c for c in grpc.StatusCode}


@dataclass(frozen=True)
class SubmitResult:
    """One task's outcome in a :meth:`Client.submit_tasks` batch, at the task's index.

    Accepted (``ok``; ``code`` 0): ``task_id``, ``state`` (a ``TaskState``: QUEUED, or
    SCHEDULED for a delayed task), ``deduplicated`` (its idempotency key was seen
    before: ``task_id`` is the first submit's) and ``warning`` (e.g. no worker serves
    its kind; no :class:`TaskwireWarning` is emitted for a batch). Refused: ``code``
    is the ``google.rpc.Code`` SubmitTask would have answered for this task alone
    (3 INVALID_ARGUMENT, 8 RESOURCE_EXHAUSTED, 14 UNAVAILABLE), ``message`` says why,
    and the task was not written: resending it (with its key) is safe.
    """

    task_id: str = ""
    state: int = task_pb2.TASK_STATE_UNSPECIFIED
    deduplicated: bool = False
    warning: str = ""
    code: int = 0
    message: str = ""

    @property
    def ok(self) -> bool:
        """Whether the task was accepted (or deduplicated)."""
        return self.code == 0

    @property
    def status_code(self) -> grpc.StatusCode:
        """``code`` as a ``grpc.StatusCode`` (OK when accepted), comparable with
        :attr:`TaskwireError.code`."""
        return _STATUS_CODES.get(self.code, grpc.StatusCode.UNKNOWN)

    @property
    def error(self) -> Optional[TaskwireError]:
        """The refusal as the error a lone ``submit`` would have raised (None when
        accepted), for callers that treat any refused task as a failure."""
        if self.ok:
            return None
        return TaskwireError(self.status_code, self.message, "TaskService/SubmitTasks")


def _task_request(task: TaskSpecLike) -> service_pb2.SubmitTaskRequest:
    if isinstance(task, service_pb2.SubmitTaskRequest):
        return task
    if isinstance(task, Mapping):
        fields = TaskSpec.__dataclass_fields__
        unknown = sorted(str(k) for k in task if k not in fields)
        if unknown:
            raise TypeError(f"unknown task field(s) {', '.join(unknown)}; a task takes {', '.join(fields)}")
        task = TaskSpec(**task)
    if not isinstance(task, TaskSpec):
        raise TypeError(f"a task must be a TaskSpec, a dict or a SubmitTaskRequest, not {type(task).__name__}")
    return _submit_request(
        task.kind,
        task.input,
        task.idempotency_key,
        task.max_attempts,
        task.labels,
        task.task_timeout,
        task.delay,
        task.run_at,
        task.parent_id,
        task.child_failure,
        task.cancel_policy,
    )


def _submit_tasks_request(tasks: Iterable[TaskSpecLike]) -> service_pb2.SubmitTasksRequest:
    """The request of a batch submit. Every task is checked here, before any call: a
    task the client itself refuses (as ``submit`` would, e.g. ``delay`` with ``run_at``)
    raises ValueError/TypeError naming its index, and nothing is sent. Size limits are
    the server's (an empty batch or one over 1,000 tasks is its INVALID_ARGUMENT)."""
    if isinstance(tasks, (str, bytes, Mapping, TaskSpec, service_pb2.SubmitTaskRequest)):
        # One task where a batch belongs: iterating it would make nonsense tasks.
        raise TypeError(f"tasks must be a list of tasks, not a single {type(tasks).__name__}")
    req = service_pb2.SubmitTasksRequest()
    for i, task in enumerate(tasks):
        try:
            req.tasks.append(_task_request(task))
        except TypeError as e:
            raise TypeError(f"tasks[{i}]: {e}") from e
        except ValueError as e:
            raise ValueError(f"tasks[{i}]: {e}") from e
    return req


def _submit_results(
    req: service_pb2.SubmitTasksRequest, resp: service_pb2.SubmitTasksResponse
) -> list[SubmitResult]:
    """The response's results as :class:`SubmitResult` objects, in request order. A
    response that does not answer every task breaks the contract (a result per task):
    that is raised as a whole-call error (INTERNAL) rather than mismatched by index."""
    if len(resp.results) != len(req.tasks):
        raise TaskwireError(
            grpc.StatusCode.INTERNAL,
            f"the server answered {len(resp.results)} results for {len(req.tasks)} tasks",
            "TaskService/SubmitTasks",
        )
    out: list[SubmitResult] = []
    for r in resp.results:
        which = r.WhichOneof("outcome")
        if which == "accepted":
            a = r.accepted
            out.append(SubmitResult(a.task_id, a.state, a.deduplicated, a.warning))
        elif which == "error":
            # code 0 would read as accepted: a refusal always carries a failure code.
            out.append(SubmitResult(code=r.error.code or grpc.StatusCode.UNKNOWN.value[0], message=r.error.message))
        else:
            # Not accepted as far as this client can tell (an outcome it does not know).
            unknown = "the server sent no outcome this client knows"
            out.append(SubmitResult(code=grpc.StatusCode.UNKNOWN.value[0], message=unknown))
    return out


def _list_request(
    state: StateLike,
    kind: str,
    labels: Optional[Mapping[str, str]],
    page_size: int,
    page_token: str,
    parent_id: str = "",
) -> service_pb2.ListTasksRequest:
    return service_pb2.ListTasksRequest(
        page_size=page_size or 0,
        page_token=page_token or "",
        state=_state_value(state),  # type: ignore[arg-type]
        kind=kind or "",
        labels=dict(labels or {}),
        parent_id=parent_id or "",
    )


TimestampLike = Union[datetime.datetime, timestamp_pb2.Timestamp]


def _bulk_request(
    kind: str,
    labels: Optional[Mapping[str, str]],
    error_code: str,
    dry_run: bool,
    finished_before: Optional[TimestampLike],
    limit: int,
) -> service_pb2.BulkTasksRequest:
    """The request of RetryTasks/DiscardTasks. ``finished_before`` is the dry run's
    ``BulkTasksResponse.finished_before`` (a Timestamp, passed on as is) or an aware
    datetime; a naive one is a ValueError, as for ``run_at``."""
    req = service_pb2.BulkTasksRequest(
        kind=kind or "",
        labels=dict(labels or {}),
        error_code=error_code or "",
        dry_run=bool(dry_run),
        limit=limit or 0,
    )
    if finished_before is not None:
        if isinstance(finished_before, timestamp_pb2.Timestamp):
            req.finished_before.CopyFrom(finished_before)
        else:
            req.finished_before.CopyFrom(_timestamp(finished_before, "finished_before"))
    return req


@dataclass(frozen=True)
class BulkResult:
    """What :meth:`Client.retry_all` / :meth:`Client.discard_all` did.

    - ``count``: the tasks retried (or discarded); for a dry run, the tasks that match
      (what a real call would change now).
    - ``task_ids``: their ids, in the order the calls returned them (empty for a dry run).
    - ``matched``: the dry run's count. ``count`` can be smaller when another caller
      retried or discarded some of them in between.
    - ``remaining``: matching tasks left unchanged: 0 once done (for a dry run, =
      ``matched``). Above 0 only when a call changed nothing although tasks still
      matched (e.g. another caller was busy with the same ones): call again.
    - ``finished_before``: the dry run's moment (UTC): only tasks that failed before it
      were considered; tasks failing later are left alone.
    - ``calls``: how many non-dry calls were made.
    """

    count: int
    task_ids: tuple[str, ...]
    matched: int
    remaining: int
    finished_before: datetime.datetime
    dry_run: bool
    calls: int = 0


class _Bulk:
    """The dry-run-then-repeat protocol of RetryTasks/DiscardTasks, shared by the sync
    and async clients: ``first`` is the dry run's request; ``next_request(resp)`` is the
    next real call's request, or None when done."""

    def __init__(
        self,
        kind: str,
        labels: Optional[Mapping[str, str]],
        error_code: str,
        dry_run: bool,
        limit: int,
    ) -> None:
        self.args = (kind, labels, error_code)
        self.dry_run = dry_run
        self.limit = limit
        self.first = _bulk_request(kind, labels, error_code, True, None, limit)
        self.dry: Optional[service_pb2.BulkTasksResponse] = None
        self.ids: list[str] = []
        self.remaining = 0
        self.calls = 0

    def next_request(self, resp: service_pb2.BulkTasksResponse) -> Optional[service_pb2.BulkTasksRequest]:
        if self.dry is None:
            self.dry = resp
            self.remaining = resp.remaining
            if self.dry_run or resp.matched == 0:
                return None
        else:
            self.calls += 1
            self.ids.extend(resp.task_ids)
            self.remaining = resp.remaining
            if len(resp.task_ids) == 0:
                # Nothing changed although tasks still match: stop rather than spin
                # (the result's `remaining` says so).
                return None
        if self.remaining == 0:
            return None
        kind, labels, error_code = self.args
        return _bulk_request(kind, labels, error_code, False, self.dry.finished_before, self.limit)

    def result(self) -> BulkResult:
        assert self.dry is not None
        return BulkResult(
            count=self.dry.matched if self.dry_run else len(self.ids),
            task_ids=tuple(self.ids),
            matched=self.dry.matched,
            remaining=self.remaining,
            finished_before=self.dry.finished_before.ToDatetime(tzinfo=datetime.timezone.utc),
            dry_run=self.dry_run,
            calls=self.calls,
        )


def _watch_tasks_request(
    kind: str, labels: Optional[Mapping[str, str]], state: StateLike
) -> service_pb2.WatchTasksRequest:
    return service_pb2.WatchTasksRequest(
        kind=kind or "",
        labels=dict(labels or {}),
        state=_state_value(state),  # type: ignore[arg-type]
    )


class _Resume:
    """Bookkeeping shared by the sync and async watch: what was seen, what to resume
    from, and how long to wait before the next try."""

    def __init__(
        self,
        task_id: str,
        after_seq: int,
        max_retries: int,
        backoff_base: float,
        backoff_max: float,
        timeout: Optional[float],
        tree: bool = False,
    ) -> None:
        self.task_id = task_id
        self.tree = tree
        self.last_seq = after_seq
        self.emitted = False
        self.finished = False
        self.reconnects = 0
        self.failures = 0
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.deadline = None if timeout is None else time.monotonic() + timeout
        # Set when the client cancelled the call itself because the connection went
        # away (GOAWAY from a server shutting down): resume rather than fail.
        self.connection_lost = False

    def already_over(self, task: task_pb2.Task) -> bool:
        """Whether a watch from ``after_seq`` would get nothing: the task is finished
        and its terminal event is not after ``after_seq``. (The server then sends
        nothing and never ends the stream, so the client must not ask.)"""
        return is_terminal(task.state) and 0 < task.last_seq <= self.last_seq

    def request(self) -> service_pb2.WatchTaskRequest:
        return service_pb2.WatchTaskRequest(task_id=self.task_id, after_seq=self.last_seq, tree=self.tree)

    def remaining(self) -> Optional[float]:
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TaskwireError(
                grpc.StatusCode.DEADLINE_EXCEEDED,
                f"watch of task {self.task_id} ran past its timeout",
                "WatchService/WatchTask",
            )
        return left

    def accept(self, ev: task_pb2.TaskEvent) -> bool:
        """Whether to hand this event to the caller (drops anything already seen)."""
        if self.emitted and ev.seq <= self.last_seq:
            return False
        self.emitted = True
        self.last_seq = max(self.last_seq, ev.seq)
        self.failures = 0
        # On a tree watch, a descendant's end is not the watch's: only the task's own.
        if is_terminal(ev.state) and (not self.tree or ev.task_id == self.task_id):
            self.finished = True
        return True

    def retryable(self, err: Optional[grpc.RpcError]) -> bool:
        """Whether a stream that ended (err None: ended OK before the terminal event)
        or failed should be resumed."""
        if err is None:
            return True
        code = err.code() if hasattr(err, "code") else None
        if code == grpc.StatusCode.CANCELLED and self.connection_lost:
            return True
        return code == grpc.StatusCode.UNAVAILABLE

    def next_delay(self, err: Optional[grpc.RpcError]) -> float:
        """Counts one failed try and returns how long to wait; raises when the retry
        budget is spent."""
        lost, self.connection_lost = self.connection_lost, False
        self.failures += 1
        if self.failures > self.max_retries:
            if err is not None:
                raise TaskwireError.from_rpc_error(err, "WatchService/WatchTask") from err
            raise TaskwireError(
                grpc.StatusCode.UNAVAILABLE,
                f"the watch of task {self.task_id} kept ending early "
                f"({self.max_retries} retries, last seq {self.last_seq})",
                "WatchService/WatchTask",
            )
        self.reconnects += 1
        if lost and self.failures == 1:
            delay = 0.0  # the server said goodbye: try at once
        else:
            delay = min(self.backoff_base * 2 ** (self.failures - 1), self.backoff_max)
            delay *= 0.75 + 0.25 * random.random()
            if self.deadline is not None:
                delay = min(delay, max(0.0, self.deadline - time.monotonic()))
        why = "connection going away" if lost else (
            f"{err.code().name}: {err.details()}" if err is not None else "stream ended early"
        )
        log.info(
            "watch of task %s: resuming after seq %d in %.2fs (%s; try %d of %d)",
            self.task_id, self.last_seq, delay, why, self.failures, self.max_retries,
        )
        return delay


class TaskWatch(Iterator[task_pb2.TaskEvent]):
    """Iterator over a task's events (``WatchService/WatchTask``) that resumes by
    itself: when the stream drops (UNAVAILABLE, a server going away, a stream that
    ends before the terminal event) it reconnects with ``after_seq`` = the last seq
    seen, with bounded exponential backoff, so nothing is skipped or repeated. It
    stops after the terminal event.

    ``last_seq`` is the seq of the newest event yielded; ``reconnects`` counts resumes.
    Call :meth:`close` (or leave a ``with`` block) to stop early.

    With ``after_seq=0`` the first event is the task's current state (seq = its
    ``last_seq``, 0 while it is SCHEDULED or QUEUED). If the stream drops before
    anything past that snapshot arrived and the snapshot's seq was 0, the resume asks
    for a snapshot again (the contract has no "from the first event" request).

    With ``after_seq`` > 0 the watch first reads the task's record: if the task is
    finished and its terminal event is at or before ``after_seq``, the iterator is empty
    (the server would otherwise keep such a stream open forever).

    A tree watch (``tree=True``, ``WatchTaskRequest.tree``) streams the events of the
    task and of all its descendants in one stream ordered by seq, each naming its task
    (``task_id``), that task's parent (``parent_id``, empty for the watched task) and
    its ``kind``; with ``after_seq=0`` it starts from the tree's first event (every
    node's history, no snapshot). It resumes the same way and stops after the watched
    task's own terminal event (a child's does not end it).
    """

    def __init__(
        self, client: "Client", task_id: str, after_seq: int, timeout: Optional[float], tree: bool = False
    ):
        self._client = client
        self._r = _Resume(
            task_id,
            after_seq,
            client.watch_retries,
            client.watch_backoff_base,
            client.watch_backoff_max,
            timeout,
            tree,
        )
        self._lock = threading.Lock()
        self._call: Any = None
        self._closed = False
        self._gen = self._run()

    @property
    def task_id(self) -> str:
        return self._r.task_id

    @property
    def tree(self) -> bool:
        """Whether this is a tree watch (the task's descendants' events too)."""
        return self._r.tree

    @property
    def last_seq(self) -> int:
        return self._r.last_seq

    @property
    def reconnects(self) -> int:
        return self._r.reconnects

    def __iter__(self) -> "TaskWatch":
        return self

    def __next__(self) -> task_pb2.TaskEvent:
        return next(self._gen)

    def __enter__(self) -> "TaskWatch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stops the watch; the iterator ends."""
        self._closed = True
        with self._lock:
            call = self._call
        if call is not None:
            call.cancel()
        try:
            self._gen.close()
        except ValueError:
            pass  # closed from another thread while iterating: the cancel ends it

    def _connection_lost(self) -> None:
        """Called from gRPC's connectivity thread when the channel left READY."""
        with self._lock:
            call = self._call
            if call is None:
                return
            self._r.connection_lost = True
        call.cancel()

    def _run(self) -> Generator[task_pb2.TaskEvent, None, None]:
        r = self._r
        if r.last_seq > 0 and r.already_over(self._client.status(r.task_id)):
            return
        self._client._watches.add(self)
        try:
            while not r.finished and not self._closed:
                err: Optional[grpc.RpcError] = None
                call = self._client._watch_stub.WatchTask(
                    r.request(), timeout=r.remaining(), metadata=self._client._metadata
                )
                with self._lock:
                    self._call = call
                    r.connection_lost = False
                try:
                    for ev in call:
                        if r.accept(ev):
                            yield ev
                            if r.finished:
                                return
                except grpc.RpcError as e:
                    err = e
                finally:
                    with self._lock:
                        self._call = None
                    call.cancel()
                if self._closed:
                    return
                if err is not None and err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    r.remaining()  # raises if the watch's own timeout passed
                if not r.retryable(err):
                    assert err is not None
                    raise TaskwireError.from_rpc_error(err, "WatchService/WatchTask") from err
                delay = r.next_delay(err)
                if delay > 0:
                    time.sleep(delay)
        finally:
            self._client._watches.discard(self)


class Client:
    """Blocking client for taskwire's TaskService and WatchService.

    ``address`` is ``host:port`` or ``http://host:port`` (plaintext), or
    ``https://host:port`` (TLS). ``timeout`` is each unary call's deadline in seconds.
    A watch resumes up to ``watch_retries`` times in a row without receiving an event,
    waiting ``watch_backoff_base * 2^n`` seconds (at most ``watch_backoff_max``) in
    between.

    Authentication and TLS:

    - ``token``: the API key (``twk_...``, from ``taskwire keys create``) of a server
      run with ``--auth keys``. Default: the ``TASKWIRE_TOKEN`` environment variable;
      ``token=""`` sends none. When there is one, every call, unary and watch, sends
      ``authorization: Bearer <token>``. Without TLS it travels in clear text: use
      ``https://`` off loopback. (An ``authorization`` entry in ``metadata`` is sent
      as is instead of ``$TASKWIRE_TOKEN``.)
    - ``ca``: the path of a PEM file with the CA certificate(s) that signed the
      server's certificate, instead of the system's roots. Default: the
      ``TASKWIRE_CA`` environment variable, used for ``https://`` addresses only. An
      explicit ``ca=`` turns TLS on for a bare ``host:port`` too; with an ``http://``
      address it is a ValueError; ``ca=""`` uses the system's roots whatever
      ``$TASKWIRE_CA`` says. The file is read once, here.
    - ``credentials``: ``grpc.ChannelCredentials`` to use as they are (e.g. with a
      client certificate for mTLS: ``grpc.ssl_channel_credentials(root, key,
      chain)``); always TLS. Not together with ``ca``.
    - ``metadata``: more ``(key, value)`` pairs sent with every call.

    With neither a token nor TLS asked for, the channel is plaintext and calls carry
    no credentials, as before. A server's refusal is a :class:`TaskwireError` with
    ``code`` UNAUTHENTICATED (no or an unknown key), PERMISSION_DENIED (the key's role
    may not do that) or NOT_FOUND (another tenant's task).
    """

    def __init__(
        self,
        address: str,
        *,
        timeout: float = 30.0,
        watch_retries: int = 10,
        watch_backoff_base: float = 0.25,
        watch_backoff_max: float = 4.0,
        credentials: Optional[grpc.ChannelCredentials] = None,
        options: Sequence[tuple[str, Any]] = (),
        metadata: Sequence[tuple[str, str]] = (),
        token: Optional[str] = None,
        ca: Optional[PathLike] = None,
    ) -> None:
        target, _ = _target(address)
        opts = list(_DEFAULT_CHANNEL_OPTIONS) + list(options)
        creds = _channel_credentials(address, credentials, ca)
        self._metadata = _call_metadata(token, metadata)
        if creds is not None:
            self._channel = grpc.secure_channel(target, creds, options=opts)
        else:
            self._channel = grpc.insecure_channel(target, options=opts)
        self.address = address
        self.timeout = timeout
        self.watch_retries = watch_retries
        self.watch_backoff_base = watch_backoff_base
        self.watch_backoff_max = watch_backoff_max
        self._tasks = service_pb2_grpc.TaskServiceStub(self._channel)
        self._watch_stub = service_pb2_grpc.WatchServiceStub(self._channel)
        self._watches: set[TaskWatch] = set()
        self._state: Optional[grpc.ChannelConnectivity] = None
        self._channel.subscribe(self._on_state)

    # -- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        """Closes the channel; running watches end."""
        for w in list(self._watches):
            w._closed = True
        try:
            self._channel.unsubscribe(self._on_state)
        except Exception:  # pragma: no cover - already closed
            pass
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _on_state(self, state: grpc.ChannelConnectivity) -> None:
        # A server that shuts down gracefully sends GOAWAY and waits for open streams
        # to finish; a watch stream only finishes with its task. Leaving READY is the
        # client's cue to reconnect its watches (from their last seq) at once.
        prev, self._state = self._state, state
        if prev == grpc.ChannelConnectivity.READY and state != grpc.ChannelConnectivity.READY:
            for w in list(self._watches):
                w._connection_lost()

    def _unary(
        self,
        method: str,
        fn: Any,
        req: Any,
        timeout: Optional[float],
        metadata: Optional[tuple[tuple[str, str], ...]] = None,
    ) -> Any:
        try:
            return fn(
                req,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata if metadata is None else metadata,
            )
        except grpc.RpcError as e:
            raise TaskwireError.from_rpc_error(e, method) from e

    # -- TaskService ----------------------------------------------------------------

    def submit(
        self,
        kind: str,
        input: JSON = None,
        *,
        idempotency_key: str = "",
        max_attempts: int = 0,
        labels: Optional[Mapping[str, str]] = None,
        task_timeout: Optional[Seconds] = None,
        delay: Optional[Seconds] = None,
        run_at: Optional[datetime.datetime] = None,
        parent_id: str = "",
        child_failure: PolicyLike = None,
        cancel_policy: PolicyLike = None,
        traceparent: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> str:
        """Submits a task and returns its id. ``input`` is any JSON value (plain
        Python); ``max_attempts`` 0 = the server's default; ``task_timeout`` is the
        per-attempt timeout (seconds or timedelta); ``timeout`` this call's deadline.
        ``delay`` (seconds or timedelta, up to 366 days) or ``run_at`` (a
        timezone-aware datetime, up to 366 days ahead; one already past runs at once)
        delays the task: it is stored SCHEDULED, with ``Task.run_at`` set, becomes
        QUEUED when due and can be cancelled until it starts. Not both, and not a naive
        ``run_at`` (ValueError, before any call); a value out of range is the server's
        INVALID_ARGUMENT.
        ``parent_id`` submits the task as a child of that task (same tenant, and a
        parent still open to children, as ``SubmitTaskRequest.parent_id`` says, else
        FAILED_PRECONDITION; no such task: NOT_FOUND; not a task id:
        INVALID_ARGUMENT): it is listed under it (``list(parent_id=...)``), counted in
        its ``Task.children``, and the parent's fan-in waits for it too. ``child_failure`` (only with a
        ``parent_id``) is what its failure does to the parent: ``"fail_parent"`` (the
        default: the parent FAILS with CHILD_FAILED), ``"ignore"`` (left out of the
        fan-in) or ``"continue"`` (the fan-in gets its error); ``cancel_policy`` is what
        cancelling this task does to its children: ``"cascade"`` (the default) or
        ``"abandon"``. Both take the ``task_pb2`` enum values too; any other value
        raises ValueError before any call.
        ``traceparent`` (W3C, ``00-<trace id>-<span id>-<flags>``) makes the task part
        of that trace; when None, the current OpenTelemetry span's context is sent if
        ``opentelemetry`` is installed and a span is current (``""``: send none).
        Emits a :class:`TaskwireWarning` when the server's answer carries a warning
        (e.g. no worker serves ``kind``); the task is accepted all the same."""
        resp = self.submit_task(
            kind,
            input,
            idempotency_key=idempotency_key,
            max_attempts=max_attempts,
            labels=labels,
            task_timeout=task_timeout,
            delay=delay,
            run_at=run_at,
            parent_id=parent_id,
            child_failure=child_failure,
            cancel_policy=cancel_policy,
            traceparent=traceparent,
            timeout=timeout,
        )
        _warn_if_any(resp)
        return resp.task_id

    def submit_task(
        self,
        kind: str,
        input: JSON = None,
        *,
        idempotency_key: str = "",
        max_attempts: int = 0,
        labels: Optional[Mapping[str, str]] = None,
        task_timeout: Optional[Seconds] = None,
        delay: Optional[Seconds] = None,
        run_at: Optional[datetime.datetime] = None,
        parent_id: str = "",
        child_failure: PolicyLike = None,
        cancel_policy: PolicyLike = None,
        traceparent: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> service_pb2.SubmitTaskResponse:
        """Like :meth:`submit`, but returns the whole response (``state``: QUEUED, or
        SCHEDULED for a delayed task; ``deduplicated``, ``warning``) and emits no
        warning."""
        req = _submit_request(
            kind,
            input,
            idempotency_key,
            max_attempts,
            labels,
            task_timeout,
            delay,
            run_at,
            parent_id,
            child_failure,
            cancel_policy,
        )
        metadata = _with_traceparent(self._metadata, traceparent)
        return self._unary("TaskService/SubmitTask", self._tasks.SubmitTask, req, timeout, metadata)

    def submit_tasks(
        self,
        tasks: Iterable[TaskSpecLike],
        *,
        traceparent: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> list[SubmitResult]:
        """Submits 1 to 1,000 tasks in one call (``TaskService/SubmitTasks``), far
        cheaper than as many ``submit`` calls, and returns one :class:`SubmitResult`
        per task, in order.

        Each task is a :class:`TaskSpec` (or a dict of its fields: ``kind``, ``input``,
        ``idempotency_key``, ``max_attempts``, ``labels``, ``task_timeout``, ``delay``,
        ``run_at``, ``parent_id``, ``child_failure``, ``cancel_policy``, as :meth:`submit`
        takes them; or a ``SubmitTaskRequest``). The
        server checks each task alone: a task it refuses (``result.ok`` is false,
        ``result.code`` e.g. 3 INVALID_ARGUMENT for a malformed kind) does not hold
        back the others, and nothing is raised for it, so look at every result.
        Resending the whole batch with the same idempotency keys is how to retry the
        refused ones: the accepted ones answer ``deduplicated`` with their first ids.
        Warnings are in ``result.warning`` (none is emitted).

        Raises :class:`TaskwireError` only when the whole call fails and nothing was
        written: INVALID_ARGUMENT for an empty batch or one over 1,000 tasks (split a
        larger one yourself), RESOURCE_EXHAUSTED over the submit rate (every task
        counts), UNAVAILABLE, or the auth errors. A task the client refuses itself
        (``delay`` with ``run_at``, a naive ``run_at``, an unknown policy name, an
        unknown dict key) raises
        ValueError/TypeError naming its index, before any call. ``traceparent`` is
        the whole batch's, as for :meth:`submit`: every task joins that trace."""
        req = _submit_tasks_request(tasks)
        metadata = _with_traceparent(self._metadata, traceparent)
        resp = self._unary("TaskService/SubmitTasks", self._tasks.SubmitTasks, req, timeout, metadata)
        return _submit_results(req, resp)

    def status(self, task_id: str, *, timeout: Optional[float] = None) -> task_pb2.Task:
        """The task's current record."""
        req = service_pb2.GetStatusRequest(task_id=task_id)
        return self._unary("TaskService/GetStatus", self._tasks.GetStatus, req, timeout)

    def cancel(self, task_id: str, *, timeout: Optional[float] = None) -> task_pb2.Task:
        """Cancels the task; returns its record (CANCELLED). A SCHEDULED (delayed) or
        QUEUED task then never runs. Its children still running are cancelled too (and
        theirs), unless it was submitted with ``cancel_policy="abandon"``.
        FAILED_PRECONDITION if it already SUCCEEDED or FAILED."""
        req = service_pb2.CancelTaskRequest(task_id=task_id)
        return self._unary("TaskService/CancelTask", self._tasks.CancelTask, req, timeout)

    def list(
        self,
        *,
        state: StateLike = None,
        kind: str = "",
        labels: Optional[Mapping[str, str]] = None,
        page_size: int = 0,
        page_token: str = "",
        parent_id: str = "",
        timeout: Optional[float] = None,
    ) -> service_pb2.ListTasksResponse:
        """One page of tasks, newest first. ``state`` is a ``TaskState`` value or a
        name (``"RUNNING"``); pass ``next_page_token`` back as ``page_token``.
        ``parent_id`` lists only the children of that task."""
        req = _list_request(state, kind, labels, page_size, page_token, parent_id)
        return self._unary("TaskService/ListTasks", self._tasks.ListTasks, req, timeout)

    def iter_tasks(
        self,
        *,
        state: StateLike = None,
        kind: str = "",
        labels: Optional[Mapping[str, str]] = None,
        page_size: int = 0,
        parent_id: str = "",
    ) -> Iterator[task_pb2.Task]:
        """Every matching task, newest first, following page tokens (``parent_id``:
        only that task's children)."""
        token = ""
        while True:
            page = self.list(
                state=state, kind=kind, labels=labels, page_size=page_size, page_token=token, parent_id=parent_id
            )
            yield from page.tasks
            token = page.next_page_token
            if not token:
                return

    # -- dead letters ---------------------------------------------------------------

    def retry(self, task_id: str, *, timeout: Optional[float] = None) -> task_pb2.Task:
        """Starts a new run of a FAILED task (a dead letter) under the same id: QUEUED
        again, ``run`` = the previous run + 1, attempts counted from 1, its input and
        settings as submitted. Returns the task as it is then (a worker may have taken
        it already). The earlier runs stay in :meth:`attempts`. FAILED_PRECONDITION if
        the task is not FAILED, NOT_FOUND if there is no such task."""
        req = service_pb2.RetryTaskRequest(task_id=task_id)
        return self._unary("TaskService/RetryTask", self._tasks.RetryTask, req, timeout)

    def retry_tasks(
        self,
        *,
        kind: str = "",
        labels: Optional[Mapping[str, str]] = None,
        error_code: str = "",
        dry_run: bool = False,
        finished_before: Optional[TimestampLike] = None,
        limit: int = 0,
        timeout: Optional[float] = None,
    ) -> BulkTasksResponse:
        """One ``TaskService/RetryTasks`` call: retries at most ``limit`` (1 to 1000;
        0 = 1000) FAILED tasks matching every filter given (``kind``, ``labels``,
        ``error_code``, e.g. ``"DEMO_FAILURE"``) that failed before ``finished_before``
        (the dry run's ``finished_before``, a Timestamp, or an aware datetime; required
        unless ``dry_run``). With ``dry_run=True`` it only counts (``matched``) and
        answers the moment of the count as ``finished_before``. Call again while
        ``remaining`` > 0. :meth:`retry_all` does all of that."""
        req = _bulk_request(kind, labels, error_code, dry_run, finished_before, limit)
        return self._unary("TaskService/RetryTasks", self._tasks.RetryTasks, req, timeout)

    def discard_tasks(
        self,
        *,
        kind: str = "",
        labels: Optional[Mapping[str, str]] = None,
        error_code: str = "",
        dry_run: bool = False,
        finished_before: Optional[TimestampLike] = None,
        limit: int = 0,
        timeout: Optional[float] = None,
    ) -> BulkTasksResponse:
        """One ``TaskService/DiscardTasks`` call: deletes matching FAILED tasks, with
        the same arguments and protocol as :meth:`retry_tasks`. :meth:`discard_all`
        does the whole protocol."""
        req = _bulk_request(kind, labels, error_code, dry_run, finished_before, limit)
        return self._unary("TaskService/DiscardTasks", self._tasks.DiscardTasks, req, timeout)

    def retry_all(
        self,
        *,
        kind: str = "",
        labels: Optional[Mapping[str, str]] = None,
        error_code: str = "",
        dry_run: bool = False,
        limit: int = 0,
        timeout: Optional[float] = None,
    ) -> BulkResult:
        """Retries every FAILED task matching the filters (all that are given must
        match; none = every dead letter the caller may see): a dry run counts them,
        then, unless ``dry_run``, calls RetryTasks with the dry run's
        ``finished_before`` (at most ``limit`` tasks per call, 0 = 1000) until none is
        left, so exactly the tasks it counted are retried, not those failing later.
        ``timeout`` is each call's deadline. Returns a :class:`BulkResult`."""
        bulk = _Bulk(kind, labels, error_code, dry_run, limit)
        req: Optional[service_pb2.BulkTasksRequest] = bulk.first
        while req is not None:
            req = bulk.next_request(self._unary("TaskService/RetryTasks", self._tasks.RetryTasks, req, timeout))
        return bulk.result()

    def discard_all(
        self,
        *,
        kind: str = "",
        labels: Optional[Mapping[str, str]] = None,
        error_code: str = "",
        dry_run: bool = False,
        limit: int = 0,
        timeout: Optional[float] = None,
    ) -> BulkResult:
        """Deletes every FAILED task matching the filters, as :meth:`retry_all`
        retries them (a dry run, then exactly the tasks it counted). A discarded task
        is gone: ``status`` raises NOT_FOUND."""
        bulk = _Bulk(kind, labels, error_code, dry_run, limit)
        req: Optional[service_pb2.BulkTasksRequest] = bulk.first
        while req is not None:
            req = bulk.next_request(
                self._unary("TaskService/DiscardTasks", self._tasks.DiscardTasks, req, timeout)
            )
        return bulk.result()

    def attempts(self, task_id: str, *, timeout: Optional[float] = None) -> list[task_pb2.Attempt]:
        """The task's attempts in every run, oldest first (``TaskService/ListAttempts``,
        from its history in the event stream): ``run``, ``attempt``, ``started_at``,
        ``ended_at`` (unset while it runs or when its worker was lost), ``outcome`` (a
        ``TaskState``: RUNNING, RETRYING, FAILED, SUCCEEDED, CANCELLED, or UNSPECIFIED
        for a lost worker), ``error`` and ``worker`` (e.g. ``taskwire-worker@host:pid``)."""
        req = service_pb2.ListAttemptsRequest(task_id=task_id)
        resp = self._unary("TaskService/ListAttempts", self._tasks.ListAttempts, req, timeout)
        return list(resp.attempts)

    def queue_stats(self, window_minutes: int = 0, *, timeout: Optional[float] = None) -> GetQueueStatsResponse:
        """Every kind's queue (``TaskService/GetQueueStats``, what ``taskwire kinds``
        shows): ``kinds``, each with ``waiting``, ``running``, ``max_running`` (the
        kind's limit on tasks running at once across all workers; 0 = none),
        ``oldest_waiting`` (a Duration; ``HasField`` is false when none waits),
        ``succeeded``, ``failed`` and ``finished_per_minute`` (oldest first; the last
        is the current minute) over the last ``window_minutes`` (1 to 60; 0 = the
        server's default, 15)."""
        req = service_pb2.GetQueueStatsRequest(window_minutes=window_minutes or 0)
        return self._unary("TaskService/GetQueueStats", self._tasks.GetQueueStats, req, timeout)

    # -- WatchService ---------------------------------------------------------------

    def watch(
        self, task_id: str, after_seq: int = 0, *, tree: bool = False, timeout: Optional[float] = None
    ) -> TaskWatch:
        """Iterates over the task's events until its terminal one, resuming by itself
        after a dropped connection (see :class:`TaskWatch`). ``tree=True`` streams the
        events of its descendants too (children, theirs, ...; each event's ``task_id``,
        ``parent_id`` and ``kind`` say whose), from the tree's first event when
        ``after_seq`` is 0. ``timeout`` bounds the whole watch (seconds; None = no
        bound)."""
        return TaskWatch(self, task_id, after_seq, timeout, tree)

    def watch_tasks(
        self,
        *,
        kind: str = "",
        labels: Optional[Mapping[str, str]] = None,
        state: StateLike = None,
        timeout: Optional[float] = None,
    ) -> Iterator[task_pb2.TaskEvent]:
        """The live events of every matching task (``WatchService/WatchTasks``). Live
        only and not resumed: after an error, list again and call it anew. ``state``
        (a ``TaskState`` value or a name) keeps only the events that move a task into
        that state: ``state="FAILED"`` is one event per task dead-lettered."""
        req = _watch_tasks_request(kind, labels, state)
        call = self._watch_stub.WatchTasks(req, timeout=timeout, metadata=self._metadata)
        try:
            yield from call
        except grpc.RpcError as e:
            raise TaskwireError.from_rpc_error(e, "WatchService/WatchTasks") from e
        finally:
            call.cancel()

    def wait(self, task_id: str, *, timeout: Optional[float] = None) -> task_pb2.Task:
        """Follows the task to its end and returns its final record."""
        for _ in self.watch(task_id, timeout=timeout):
            pass
        return self.status(task_id)


class AsyncTaskWatch(AsyncIterator[task_pb2.TaskEvent]):
    """The asyncio twin of :class:`TaskWatch` (same resume rules)."""

    def __init__(
        self, client: "AsyncClient", task_id: str, after_seq: int, timeout: Optional[float], tree: bool = False
    ):
        self._client = client
        self._r = _Resume(
            task_id,
            after_seq,
            client.watch_retries,
            client.watch_backoff_base,
            client.watch_backoff_max,
            timeout,
            tree,
        )
        self._call: Any = None
        self._closed = False
        self._gen = self._run()

    @property
    def task_id(self) -> str:
        return self._r.task_id

    @property
    def tree(self) -> bool:
        """Whether this is a tree watch (the task's descendants' events too)."""
        return self._r.tree

    @property
    def last_seq(self) -> int:
        return self._r.last_seq

    @property
    def reconnects(self) -> int:
        return self._r.reconnects

    def __aiter__(self) -> "AsyncTaskWatch":
        return self

    async def __anext__(self) -> task_pb2.TaskEvent:
        return await self._gen.__anext__()

    async def __aenter__(self) -> "AsyncTaskWatch":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stops the watch; the iterator ends."""
        self._closed = True
        if self._call is not None:
            self._call.cancel()
        await self._gen.aclose()

    async def _monitor(self, call: Any) -> None:
        """Cancels ``call`` (to resume it) when the channel leaves READY."""
        channel = self._client._channel
        state = channel.get_state(try_to_connect=False)
        while True:
            await channel.wait_for_state_change(state)
            new = channel.get_state(try_to_connect=False)
            if state == grpc.ChannelConnectivity.READY and new != grpc.ChannelConnectivity.READY:
                self._r.connection_lost = True
                call.cancel()
                return
            state = new

    async def _run(self) -> AsyncGenerator[task_pb2.TaskEvent, None]:
        r = self._r
        if r.last_seq > 0 and r.already_over(await self._client.status(r.task_id)):
            return
        while not r.finished and not self._closed:
            err: Optional[grpc.RpcError] = None
            r.connection_lost = False
            call = self._client._watch_stub.WatchTask(
                r.request(), timeout=r.remaining(), metadata=self._client._metadata
            )
            self._call = call
            monitor = asyncio.ensure_future(self._monitor(call))
            try:
                async for ev in call:
                    if r.accept(ev):
                        yield ev
                        if r.finished:
                            return
            except asyncio.CancelledError:
                # grpc.aio reports a call cancelled by the client as CancelledError;
                # resume only if this client did it because the connection went away
                # (an outer cancellation of the consuming task propagates).
                task = asyncio.current_task()
                cancelling = getattr(task, "cancelling", None)  # Python 3.11+
                if not r.connection_lost or (cancelling is not None and cancelling()):
                    raise
                err = _CancelledByClient()
            except grpc.RpcError as e:
                err = e
            finally:
                monitor.cancel()
                self._call = None
                call.cancel()
            if self._closed:
                return
            if err is not None and err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                r.remaining()
            if not r.retryable(err):
                assert err is not None
                raise TaskwireError.from_rpc_error(err, "WatchService/WatchTask") from err
            delay = r.next_delay(err)
            if delay > 0:
                await asyncio.sleep(delay)


class _CancelledByClient(grpc.RpcError):
    """Stands for a call this client cancelled because its connection went away."""

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.CANCELLED

    def details(self) -> str:
        return "the connection went away; resuming"


class AsyncClient:
    """asyncio client (``grpc.aio``) with the same methods and arguments as
    :class:`Client` (``token``/``TASKWIRE_TOKEN``, ``ca``/``TASKWIRE_CA``,
    ``credentials``, ``metadata``: see there); create it inside a running event loop.
    ``watch`` returns an async iterator."""

    def __init__(
        self,
        address: str,
        *,
        timeout: float = 30.0,
        watch_retries: int = 10,
        watch_backoff_base: float = 0.25,
        watch_backoff_max: float = 4.0,
        credentials: Optional[grpc.ChannelCredentials] = None,
        options: Sequence[tuple[str, Any]] = (),
        metadata: Sequence[tuple[str, str]] = (),
        token: Optional[str] = None,
        ca: Optional[PathLike] = None,
    ) -> None:
        target, _ = _target(address)
        opts = list(_DEFAULT_CHANNEL_OPTIONS) + list(options)
        creds = _channel_credentials(address, credentials, ca)
        self._metadata = _call_metadata(token, metadata)
        if creds is not None:
            self._channel = grpc.aio.secure_channel(target, creds, options=opts)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=opts)
        self.address = address
        self.timeout = timeout
        self.watch_retries = watch_retries
        self.watch_backoff_base = watch_backoff_base
        self.watch_backoff_max = watch_backoff_max
        self._tasks = service_pb2_grpc.TaskServiceStub(self._channel)
        self._watch_stub = service_pb2_grpc.WatchServiceStub(self._channel)

    async def close(self) -> None:
        await self._channel.close(None)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _unary(
        self,
        method: str,
        fn: Any,
        req: Any,
        timeout: Optional[float],
        metadata: Optional[tuple[tuple[str, str], ...]] = None,
    ) -> Any:
        try:
            return await fn(
                req,
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata if metadata is None else metadata,
            )
        except grpc.RpcError as e:
            raise TaskwireError.from_rpc_error(e, method) from e

    async def submit(
        self,
        kind: str,
        input: JSON = None,
        *,
        idempotency_key: str = "",
        max_attempts: int = 0,
        labels: Optional[Mapping[str, str]] = None,
        task_timeout: Optional[Seconds] = None,
        delay: Optional[Seconds] = None,
        run_at: Optional[datetime.datetime] = None,
        parent_id: str = "",
        child_failure: PolicyLike = None,
        cancel_policy: PolicyLike = None,
        traceparent: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> str:
        """See :meth:`Client.submit`."""
        resp = await self.submit_task(
            kind,
            input,
            idempotency_key=idempotency_key,
            max_attempts=max_attempts,
            labels=labels,
            task_timeout=task_timeout,
            delay=delay,
            run_at=run_at,
            parent_id=parent_id,
            child_failure=child_failure,
            cancel_policy=cancel_policy,
            traceparent=traceparent,
            timeout=timeout,
        )
        _warn_if_any(resp)
        return resp.task_id

    async def submit_task(
        self,
        kind: str,
        input: JSON = None,
        *,
        idempotency_key: str = "",
        max_attempts: int = 0,
        labels: Optional[Mapping[str, str]] = None,
        task_timeout: Optional[Seconds] = None,
        delay: Optional[Seconds] = None,
        run_at: Optional[datetime.datetime] = None,
        parent_id: str = "",
        child_failure: PolicyLike = None,
        cancel_policy: PolicyLike = None,
        traceparent: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> service_pb2.SubmitTaskResponse:
        req = _submit_request(
            kind,
            input,
            idempotency_key,
            max_attempts,
            labels,
            task_timeout,
            delay,
            run_at,
            parent_id,
            child_failure,
            cancel_policy,
        )
        metadata = _with_traceparent(self._metadata, traceparent)
        return await self._unary("TaskService/SubmitTask", self._tasks.SubmitTask, req, timeout, metadata)

    async def submit_tasks(
        self,
        tasks: Iterable[TaskSpecLike],
        *,
        traceparent: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> list[SubmitResult]:
        """See :meth:`Client.submit_tasks`: a result per task, in order; only a
        whole-call failure raises."""
        req = _submit_tasks_request(tasks)
        metadata = _with_traceparent(self._metadata, traceparent)
        resp = await self._unary("TaskService/SubmitTasks", self._tasks.SubmitTasks, req, timeout, metadata)
        return _submit_results(req, resp)

    async def status(self, task_id: str, *, timeout: Optional[float] = None) -> task_pb2.Task:
        req = service_pb2.GetStatusRequest(task_id=task_id)
        return await self._unary("TaskService/GetStatus", self._tasks.GetStatus, req, timeout)

    async def cancel(self, task_id: str, *, timeout: Optional[float] = None) -> task_pb2.Task:
        req = service_pb2.CancelTaskRequest(task_id=task_id)
        return await self._unary("TaskService/CancelTask", self._tasks.CancelTask, req, timeout)

    async def list(
        self,
        *,
        state: StateLike = None,
        kind: str = "",
        labels: Optional[Mapping[str, str]] = None,
        page_size: int = 0,
        page_token: str = "",
        parent_id: str = "",
        timeout: Optional[float] = None,
    ) -> service_pb2.ListTasksResponse:
        req = _list_request(state, kind, labels, page_size, page_token, parent_id)
        return await self._unary("TaskService/ListTasks", self._tasks.ListTasks, req, timeout)

    async def iter_tasks(
        self,
        *,
        state: StateLike = None,
        kind: str = "",
        labels: Optional[Mapping[str, str]] = None,
        page_size: int = 0,
        parent_id: str = "",
    ) -> AsyncIterator[task_pb2.Task]:
        """See :meth:`Client.iter_tasks`."""
        token = ""
        while True:
            page = await self.list(
                state=state, kind=kind, labels=labels, page_size=page_size, page_token=token, parent_id=parent_id
            )
            for t in page.tasks:
                yield t
            token = page.next_page_token
            if not token:
                return

    async def retry(self, task_id: str, *, timeout: Optional[float] = None) -> task_pb2.Task:
        """See :meth:`Client.retry`."""
        req = service_pb2.RetryTaskRequest(task_id=task_id)
        return await self._unary("TaskService/RetryTask", self._tasks.RetryTask, req, timeout)

    async def retry_tasks(
        self,
        *,
        kind: str = "",
        labels: Optional[Mapping[str, str]] = None,
        error_code: str = "",
        dry_run: bool = False,
        finished_before: Optional[TimestampLike] = None,
        limit: int = 0,
        timeout: Optional[float] = None,
    ) -> BulkTasksResponse:
        """See :meth:`Client.retry_tasks`."""
        req = _bulk_request(kind, labels, error_code, dry_run, finished_before, limit)
        return await self._unary("TaskService/RetryTasks", self._tasks.RetryTasks, req, timeout)

    async def discard_tasks(
        self,
        *,
        kind: str = "",
        labels: Optional[Mapping[str, str]] = None,
        error_code: str = "",
        dry_run: bool = False,
        finished_before: Optional[TimestampLike] = None,
        limit: int = 0,
        timeout: Optional[float] = None,
    ) -> BulkTasksResponse:
        """See :meth:`Client.discard_tasks`."""
        req = _bulk_request(kind, labels, error_code, dry_run, finished_before, limit)
        return await self._unary("TaskService/DiscardTasks", self._tasks.DiscardTasks, req, timeout)

    async def retry_all(
        self,
        *,
        kind: str = "",
        labels: Optional[Mapping[str, str]] = None,
        error_code: str = "",
        dry_run: bool = False,
        limit: int = 0,
        timeout: Optional[float] = None,
    ) -> BulkResult:
        """See :meth:`Client.retry_all`."""
        bulk = _Bulk(kind, labels, error_code, dry_run, limit)
        req: Optional[service_pb2.BulkTasksRequest] = bulk.first
        while req is not None:
            req = bulk.next_request(
                await self._unary("TaskService/RetryTasks", self._tasks.RetryTasks, req, timeout)
            )
        return bulk.result()

    async def discard_all(
        self,
        *,
        kind: str = "",
        labels: Optional[Mapping[str, str]] = None,
        error_code: str = "",
        dry_run: bool = False,
        limit: int = 0,
        timeout: Optional[float] = None,
    ) -> BulkResult:
        """See :meth:`Client.discard_all`."""
        bulk = _Bulk(kind, labels, error_code, dry_run, limit)
        req: Optional[service_pb2.BulkTasksRequest] = bulk.first
        while req is not None:
            req = bulk.next_request(
                await self._unary("TaskService/DiscardTasks", self._tasks.DiscardTasks, req, timeout)
            )
        return bulk.result()

    async def attempts(self, task_id: str, *, timeout: Optional[float] = None) -> list[task_pb2.Attempt]:
        """See :meth:`Client.attempts`."""
        req = service_pb2.ListAttemptsRequest(task_id=task_id)
        resp = await self._unary("TaskService/ListAttempts", self._tasks.ListAttempts, req, timeout)
        return list(resp.attempts)

    async def queue_stats(self, window_minutes: int = 0, *, timeout: Optional[float] = None) -> GetQueueStatsResponse:
        """See :meth:`Client.queue_stats`."""
        req = service_pb2.GetQueueStatsRequest(window_minutes=window_minutes or 0)
        return await self._unary("TaskService/GetQueueStats", self._tasks.GetQueueStats, req, timeout)

    def watch(
        self, task_id: str, after_seq: int = 0, *, tree: bool = False, timeout: Optional[float] = None
    ) -> AsyncTaskWatch:
        """See :meth:`Client.watch`; use with ``async for``."""
        return AsyncTaskWatch(self, task_id, after_seq, timeout, tree)

    async def watch_tasks(
        self,
        *,
        kind: str = "",
        labels: Optional[Mapping[str, str]] = None,
        state: StateLike = None,
        timeout: Optional[float] = None,
    ) -> AsyncIterator[task_pb2.TaskEvent]:
        """See :meth:`Client.watch_tasks`."""
        req = _watch_tasks_request(kind, labels, state)
        call = self._watch_stub.WatchTasks(req, timeout=timeout, metadata=self._metadata)
        try:
            async for ev in call:
                yield ev
        except grpc.RpcError as e:
            raise TaskwireError.from_rpc_error(e, "WatchService/WatchTasks") from e
        finally:
            call.cancel()

    async def wait(self, task_id: str, *, timeout: Optional[float] = None) -> task_pb2.Task:
        async for _ in self.watch(task_id, timeout=timeout):
            pass
        return await self.status(task_id)

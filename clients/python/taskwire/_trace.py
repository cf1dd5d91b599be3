"""W3C trace context (``traceparent``) for the client and the worker: one trace per
task, from the submit through the api and the worker's attempt to every event it
appends (docs/protocol.md).

OpenTelemetry is optional: when the ``opentelemetry`` package is importable, the client
sends the current span's context with a submit, and the worker starts a real span for
each attempt if an SDK tracer provider is configured. Without it, the worker still
continues the task's trace in its events' headers, with a random span id per attempt.
Needs neither grpcio nor nats-py.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Optional

#: The gRPC metadata key and NATS header that carry the context.
TRACEPARENT = "traceparent"

# version-trace_id-parent_id-flags, lower-case hex; a later version may append fields.
_TRACEPARENT_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")


@dataclass(frozen=True)
class TraceParent:
    """A parsed ``traceparent``: 32 hex digits of trace id, 16 of span id, 2 of flags."""

    trace_id: str
    span_id: str
    flags: str = "01"

    def __str__(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    @classmethod
    def parse(cls, value: str) -> Optional["TraceParent"]:
        """The context ``value`` names, or None if it is empty or malformed (the W3C
        rules: version ff, all-zero ids and extra fields in version 00 are invalid)."""
        m = _TRACEPARENT_RE.match(value or "")
        if m is None:
            return None
        version, trace_id, span_id, flags, rest = m.groups()
        if version == "ff" or (version == "00" and rest) or set(trace_id) == {"0"} or set(span_id) == {"0"}:
            return None
        return cls(trace_id, span_id, flags)

    def child(self) -> "TraceParent":
        """The same trace with a new random span id (same flags)."""
        return TraceParent(self.trace_id, new_span_id(), self.flags)


def new_span_id() -> str:
    """16 hex digits from 8 random bytes, never all zero."""
    while True:
        b = os.urandom(8)
        if any(b):
            return b.hex()


def _otel() -> Any:
    """The ``opentelemetry.trace`` module, or None when OpenTelemetry is not installed."""
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    return trace


def _format(span_context: Any) -> Optional[str]:
    if span_context is None or not span_context.is_valid:
        return None
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{int(span_context.trace_flags):02x}"


def current_traceparent() -> Optional[str]:
    """The current OpenTelemetry span's ``traceparent``, if OpenTelemetry is importable
    and a span is current; else None."""
    trace = _otel()
    if trace is None:
        return None
    return _format(trace.get_current_span().get_span_context())


def outgoing(traceparent: Optional[str]) -> Optional[str]:
    """What a submit sends: ``traceparent`` if given (validated; ``""`` sends none),
    else the current OpenTelemetry span's context, if any."""
    if traceparent is None:
        return current_traceparent()
    if traceparent == "":
        return None
    if TraceParent.parse(traceparent) is None:
        raise ValueError(
            f"traceparent {traceparent!r} is not a W3C traceparent (00-<32 hex>-<16 hex>-<2 hex>, lower case)"
        )
    return traceparent


class AttemptTrace:
    """The trace context of one attempt: ``traceparent`` (None: send no header) and,
    when an OpenTelemetry SDK is configured, the span it names."""

    def __init__(self, traceparent: Optional[str], span: Any = None) -> None:
        self.traceparent = traceparent
        self.span = span
        self.outcome: Optional[str] = None
        self._ended = False

    @contextmanager
    def activate(self) -> Iterator[None]:
        """Makes the attempt's span current (for the handler's own spans)."""
        if self.span is None:
            yield
            return
        from opentelemetry import trace

        with trace.use_span(self.span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
            yield

    def set_attribute(self, key: str, value: Any) -> None:
        """Sets an attribute of the span, if there is one (e.g. the attempt number,
        known once the attempt has claimed its task)."""
        if self.span is not None:
            self.span.set_attribute(key, value)

    def record_exception(self, exc: BaseException) -> None:
        if self.span is not None:
            self.span.record_exception(exc)

    def finish(self, outcome: str, *, error: str = "") -> None:
        """Records how the attempt ended (the first call wins), e.g. ``succeeded``,
        ``retried``, ``failed``; ``error`` marks the span as failed."""
        if self.outcome is not None:
            return
        self.outcome = outcome
        if self.span is None:
            return
        self.span.set_attribute("outcome", outcome)
        if error:
            from opentelemetry.trace import Status, StatusCode

            self.span.set_status(Status(StatusCode.ERROR, error))

    def end(self) -> None:
        """Ends the span (once)."""
        if self._ended:
            return
        self._ended = True
        if self.span is not None:
            self.span.end()


def start_attempt(parent: str, name: str, attributes: Mapping[str, Any]) -> AttemptTrace:
    """The trace context of an attempt of a task whose ``TaskMessage.traceparent`` is
    ``parent``: with a configured OpenTelemetry SDK, a new span, a child of ``parent``
    (or of the current context when ``parent`` is empty: a new trace then); otherwise
    ``parent``'s trace id and flags with a new random span id, or nothing when
    ``parent`` is empty or malformed."""
    span = _start_span(parent, name, attributes)
    if span is not None:
        return AttemptTrace(_format(span.get_span_context()), span)
    parsed = TraceParent.parse(parent)
    return AttemptTrace(str(parsed.child()) if parsed else None)


def _start_span(parent: str, name: str, attributes: Mapping[str, Any]) -> Any:
    """A real span, or None when OpenTelemetry is missing or no SDK is configured."""
    trace = _otel()
    if trace is None:
        return None
    try:
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        context = None  # the current context: a new trace unless a span is current
        if TraceParent.parse(parent) is not None:
            context = TraceContextTextMapPropagator().extract({TRACEPARENT: parent})
        parent_span_id = trace.get_current_span(context).get_span_context().span_id
        span = trace.get_tracer("taskwire.worker").start_span(name, context=context, attributes=dict(attributes))
    except Exception:  # a broken or incompatible OpenTelemetry: carry on without it
        return None
    sc = span.get_span_context()
    # The API's no-op tracer (no SDK configured) hands back the parent's context (an
    # invalid one when there is no parent): not a span of this attempt.
    if not sc.is_valid or sc.span_id == parent_span_id:
        return None
    return span

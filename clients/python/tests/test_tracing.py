"""One trace per task, through Python: a submit's `traceparent` (given, or the current
OpenTelemetry span's) reaches the api, and the Python worker continues the task's trace
in the `traceparent` header of every event it appends to TASKWIRE_EVENTS (read back
here with nats-py), with a span id of each attempt's own. The traced fixtures run a
`taskwire dev` with tracing on, exporting to an OTLP sink of the test's own (with
tracing off, the api carries no trace context, and the worker sends no header)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any, Optional

import pytest

from conftest import Dev, OtlpSink, PyWorker
from helpers import eventually, final_status, nats_connection, running, states
from taskwire import AsyncClient, Client, TaskSpec
from taskwire._trace import TraceParent
from taskwire.client import from_value, is_terminal, state_name
from taskwire.internal.v1 import messages_pb2
from taskwire.worker import Worker

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"

Stored = tuple[int, dict[str, str], messages_pb2.Event]


async def _stored_events(nats_url: str, task_id: str) -> list[Stored]:
    """A finished task's whole history as stored, with each message's headers: an
    ephemeral ordered consumer on `taskwire.events.<task_id>`, read to the terminal
    event."""
    async with nats_connection(nats_url) as nc:
        js = nc.jetstream(timeout=5)
        sub = await js.subscribe(f"taskwire.events.{task_id}", ordered_consumer=True)
        out: list[Stored] = []
        try:
            while True:
                msg = await sub.next_msg(timeout=10)
                ev = messages_pb2.Event.FromString(msg.data)
                out.append((msg.metadata.sequence.stream, dict(msg.headers or {}), ev))
                if is_terminal(ev.state):
                    return out
        finally:
            await sub.unsubscribe()


def stored_events(dev: Dev, task_id: str) -> list[Stored]:
    return asyncio.run(_stored_events(dev.nats_url, task_id))


def trace_headers(stored: list[Stored]) -> list[Optional[TraceParent]]:
    return [TraceParent.parse(headers.get("traceparent", "")) for _, headers, _ in stored]


def test_python_worker_events_continue_the_submits_trace(
    traced_dev: Dev, traced_py_worker: PyWorker, otlp_sink: OtlpSink
) -> None:
    with Client(traced_dev.address, timeout=15) as client:
        task_id = client.submit("py.reverse", {"text": "one two three"}, traceparent=TRACEPARENT)
        client.wait(task_id, timeout=60)
        assert state_name(final_status(client, task_id).state) == "SUCCEEDED", traced_py_worker.tail()

    stored = stored_events(traced_dev, task_id)
    # Every event of this run is the Python worker's: RUNNING, one per word, SUCCEEDED.
    assert states(ev for _, _, ev in stored) == ["RUNNING"] * 4 + ["SUCCEEDED"]
    tps = trace_headers(stored)
    assert all(tp is not None for tp in tps), [h for _, h, _ in stored]
    assert {tp.trace_id for tp in tps} == {TRACE_ID}  # type: ignore[union-attr]
    # One attempt, one span of its own: not the caller's (nor, being new, the api's).
    span_ids = {tp.span_id for tp in tps}  # type: ignore[union-attr]
    assert len(span_ids) == 1 and CALLER_SPAN not in span_ids
    assert {tp.flags for tp in tps} == {"01"}  # type: ignore[union-attr]

    # taskwire dev exported this trace, and its recorder's spans are children of the
    # Python attempt's span, which it read from the headers (raw bytes in the OTLP
    # protobuf bodies: trace id and parent span id).
    attempt_span = bytes.fromhex(span_ids.pop())
    got = eventually(
        otlp_sink.received,
        lambda b: bytes.fromhex(TRACE_ID) in b and attempt_span in b,
        timeout=15,
        every=0.2,
    )
    assert bytes.fromhex(TRACE_ID) in got, "the api's spans of the trace were exported"
    assert attempt_span in got, "a recorder span names the Python attempt as its parent"


def test_each_attempt_has_its_own_span_in_the_trace(traced_dev: Dev, traced_py_worker: PyWorker) -> None:
    with Client(traced_dev.address, timeout=15) as client:
        task_id = client.submit("py.fail", {}, max_attempts=2, traceparent=TRACEPARENT)
        assert state_name(final_status(client, task_id, timeout=60).state) == "FAILED", traced_py_worker.tail()

    stored = stored_events(traced_dev, task_id)
    assert [(state_name(ev.state), ev.attempt) for _, _, ev in stored] == [
        ("RUNNING", 1), ("RETRYING", 1), ("RUNNING", 2), ("FAILED", 2),
    ]
    tps = trace_headers(stored)
    assert all(tp is not None and tp.trace_id == TRACE_ID for tp in tps), [h for _, h, _ in stored]
    first, second = {tps[0].span_id, tps[1].span_id}, {tps[2].span_id, tps[3].span_id}  # type: ignore[union-attr]
    assert len(first) == 1 and len(second) == 1 and first != second


def test_no_trace_context_no_header(dev: Dev, py_worker: PyWorker) -> None:
    # This dev traces nothing: its api drops the caller's context (TaskMessage's
    # traceparent is empty), and the worker then sends no header.
    with Client(dev.address, timeout=15) as client:
        task_id = client.submit("py.reverse", {"text": "a b"}, traceparent=TRACEPARENT)
        assert state_name(final_status(client, task_id, timeout=60).state) == "SUCCEEDED", py_worker.tail()
    stored = stored_events(dev, task_id)
    assert states(ev for _, _, ev in stored) == ["RUNNING"] * 3 + ["SUCCEEDED"]
    assert all("traceparent" not in headers for _, headers, _ in stored), [h for _, h, _ in stored]


def test_submit_tasks_sends_the_traceparent_for_every_task(traced_dev: Dev) -> None:
    # One traceparent per batch call: every task of it joins that trace (dev's Rust
    # worker runs them; their events carry the trace id).
    with Client(traced_dev.address, timeout=15) as client:
        results = client.submit_tasks(
            [TaskSpec("demo.echo", {"batch": 0}), TaskSpec("demo.echo", {"batch": 1})], traceparent=TRACEPARENT
        )
        assert all(r.ok for r in results), results
        for r in results:
            assert state_name(final_status(client, r.task_id, timeout=30).state) == "SUCCEEDED"
    for r in results:
        tps = trace_headers(stored_events(traced_dev, r.task_id))
        assert tps and all(tp is not None and tp.trace_id == TRACE_ID for tp in tps), tps


def test_a_malformed_traceparent_is_refused_before_sending(client: Client) -> None:
    with pytest.raises(ValueError, match="traceparent"):
        client.submit("demo.echo", {}, traceparent="00-not-a-trace-01")


# -- with the OpenTelemetry SDK (optional at run time; pinned for the tests) ----------

@pytest.fixture(scope="module")
def otel_sdk() -> Any:
    return pytest.importorskip("opentelemetry.sdk.trace")


@pytest.fixture(scope="module")
def sdk_spans(otel_sdk: Any) -> Iterator[Any]:
    """The process's tracer provider, an SDK one, with an in-memory exporter. Global
    and set once per process (OpenTelemetry's rule); no test here makes a span current
    outside its own block, so other tests' submits send no context."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, otel_sdk.TracerProvider):
        provider = otel_sdk.TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


def test_submit_sends_the_current_span_as_traceparent(traced_dev: Dev, otel_sdk: Any) -> None:
    # A span current in the caller (a provider of its own: nothing global needed).
    tracer = otel_sdk.TracerProvider().get_tracer("caller")
    with Client(traced_dev.address, timeout=15) as client:
        with tracer.start_as_current_span("caller") as span:
            task_id = client.submit("demo.echo", {"traced": "by otel"})
        assert state_name(final_status(client, task_id).state) == "SUCCEEDED"
    trace_id = f"{span.get_span_context().trace_id:032x}"
    # dev's Rust worker ran it: its events carry the caller's trace id.
    tps = trace_headers(stored_events(traced_dev, task_id))
    assert tps and all(tp is not None and tp.trace_id == trace_id for tp in tps)


async def test_worker_with_the_sdk_makes_each_attempt_a_span(traced_dev: Dev, sdk_spans: Any) -> None:
    from opentelemetry import trace

    worker = Worker(traced_dev.nats_url, ack_wait=5, shutdown_grace=2, name="taskwire-worker-py-otel")

    @worker.handler("py.otel")
    async def handle(ctx: Any) -> Any:
        # The handler runs in the attempt's span: its own spans are children.
        with trace.get_tracer("handler").start_as_current_span("handler work"):
            await ctx.progress(0.5, "half")
        return {"traceparent": ctx.traceparent}

    async with running(worker), AsyncClient(traced_dev.address, timeout=15) as client:
        task_id = await client.submit("py.otel", {}, traceparent=TRACEPARENT)
        events = [ev async for ev in client.watch(task_id, timeout=60)]
    assert state_name(events[-1].state) == "SUCCEEDED"

    stored = await _stored_events(traced_dev.nats_url, task_id)
    tps = trace_headers(stored)
    assert len(stored) == 3 and all(tp is not None for tp in tps)
    assert {str(tp) for tp in tps} == {from_value(events[-1].output)["traceparent"]}

    spans = sdk_spans.get_finished_spans()
    attempts = [s for s in spans if s.name == "attempt py.otel" and s.attributes.get("task_id") == task_id]
    assert len(attempts) == 1, [s.name for s in spans]
    attempt = attempts[0]
    ctx = attempt.get_span_context()
    assert f"{ctx.trace_id:032x}" == TRACE_ID
    assert {tp.span_id for tp in tps} == {f"{ctx.span_id:016x}"}  # type: ignore[union-attr]
    # Its parent is the submit's context as the api passed it on (the api's span).
    assert attempt.parent is not None and attempt.parent.is_remote
    assert f"{attempt.parent.trace_id:032x}" == TRACE_ID
    assert dict(attempt.attributes) == {"task_id": task_id, "kind": "py.otel", "attempt": 1, "outcome": "succeeded"}
    inner = [s for s in spans if s.name == "handler work" and s.context.trace_id == ctx.trace_id]
    assert len(inner) == 1 and inner[0].parent.span_id == ctx.span_id

"""Task graphs from Python: a Python worker's handler spawns children
(``TaskContext.spawn``) and fans in their results; the child failure policies
(fail_parent, ignore, continue); children between Python and Rust workers both ways;
the client's side (submit with ``parent_id``, ``list(parent_id=...)``, a parent's
``Task.children`` counts, the server's refusals and the client's own); and the claim
rules of a parent's steps (a first step's message redelivered after WAITING is acked,
not run again; a fan-in message for another WAITING event is acked, not run).

Against the session's `taskwire dev` (its api's graph loop creates the children and
enqueues the fan-in; its Rust worker serves demo.*) with in-process Workers, each test
with kinds of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest
from nats.aio.msg import Msg

from conftest import Dev
from helpers import (
    async_eventually,
    async_final_status,
    final_status,
    nats_connection,
    running,
    stored_messages,
)
from taskwire import AsyncClient, Client, TaskSpec, TaskwireError
from taskwire.client import from_value, is_terminal, state_name
from taskwire.internal.v1 import messages_pb2
from taskwire.v1 import task_pb2
from taskwire.worker import (
    MAX_CHILDREN,
    ChildResult,
    TaskContext,
    TaskFailure,
    Worker,
    kind_consumer,
    message_id,
    uuid7,
)

WAIT = 30.0


def _kind(name: str) -> str:
    return f"py.{name}-{uuid.uuid4().hex[:8]}"


@contextlib.asynccontextmanager
async def _worker(
    dev: Dev, handlers: dict[str, Callable[[TaskContext], Awaitable[Any]]], **kw: Any
) -> AsyncIterator[Worker]:
    """A Worker serving every kind of ``handlers`` on dev's NATS until the block ends."""
    kw.setdefault("ack_wait", 5.0)
    worker = Worker(dev.nats_url, backoff_base=0.2, backoff_max=1, shutdown_grace=1, stream_wait=15, **kw)
    for kind, handler in handlers.items():
        worker.register(kind, handler)
    async with running(worker):
        yield worker


async def _events(dev: Dev, task_id: str) -> list[tuple[int, messages_pb2.Event]]:
    """(seq, event) of every stored event of the task, oldest first, as NATS holds them."""
    async with nats_connection(dev.nats_url) as nc:
        stored = await stored_messages(nc.jsm(timeout=5), "TASKWIRE_EVENTS", f"taskwire.events.{task_id}")
    return [(int(raw.seq), messages_pb2.Event.FromString(raw.data or b"")) for raw in stored]


async def _children(tw: AsyncClient, parent: str) -> list[task_pb2.Task]:
    """The parent's children, oldest first."""
    page = await tw.list(parent_id=parent, page_size=1000)
    return list(reversed(page.tasks))


def _is_uuid7(task_id: str) -> bool:
    u = uuid.UUID(task_id)
    return str(u) == task_id and u.version == 7


# -- no server ------------------------------------------------------------------------


def test_uuid7_ids_increase_and_carry_the_time() -> None:
    before = time.time()
    ids = [uuid7() for _ in range(5000)]
    after = time.time()
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids), "ids made one after the other sort in that order"
    for i in (ids[0], ids[-1]):
        u = uuid.UUID(i)
        assert u.version == 7 and u.variant == uuid.RFC_4122 and str(u) == i
        ms = u.int >> 80
        assert int(before * 1000) - 1 <= ms <= int(after * 1000) + 1


def test_fan_in_message_id() -> None:
    tid = "0192f4e2-6c1a-7d3e-9a4b-1f2e3d4c5b6a"
    first = messages_pb2.TaskMessage(task_id=tid)
    assert message_id(first) == tid
    assert message_id(messages_pb2.TaskMessage(task_id=tid, run=3)) == f"{tid}:3"
    fan_in = messages_pb2.TaskMessage(task_id=tid, fan_in=messages_pb2.FanIn(waiting_seq=42))
    assert message_id(fan_in) == f"{tid}:fan-in:42"


def _context(**kw: Any) -> TaskContext:
    args: dict[str, Any] = dict(
        task_id=str(uuid.uuid4()),
        kind="py.parent",
        input=None,
        labels={},
        attempt=1,
        max_attempts=4,
        deadline=time.monotonic() + 60,
        stop=asyncio.Event(),
        writer=None,
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    )
    args.update(kw)
    return TaskContext(**args)


def test_spawn_builds_the_child_task_messages() -> None:
    ctx = _context()
    assert ctx.children is None and ctx.step_output is None, "a first step has no fan-in"
    a = ctx.spawn("py.child", {"i": 0})
    b = ctx.spawn(
        "py.child",
        [1, "two"],
        on_failure="continue",
        labels={"team": "search"},
        max_attempts=7,
        timeout=datetime.timedelta(seconds=90),
        cancel_policy="abandon",
    )
    c = ctx.spawn("py.child", None, on_failure=task_pb2.CHILD_FAILURE_POLICY_IGNORE, timeout=1.5)
    assert ctx.spawned == [a, b, c]
    assert all(_is_uuid7(i) for i in (a, b, c)) and a < b < c
    ma, mb, mc = ctx._spawned
    assert (ma.task_id, ma.kind, from_value(ma.input), ma.parent_id) == (a, "py.child", {"i": 0}, ctx.task_id)
    # Defaults as the Rust ChildSpec's: fail the parent, cascade, the parent's attempts,
    # the worker's default timeout, the parent's trace.
    assert ma.child_failure == task_pb2.CHILD_FAILURE_POLICY_FAIL_PARENT
    assert ma.cancel_policy == task_pb2.CANCEL_POLICY_CASCADE
    assert ma.max_attempts == 4 and not ma.HasField("timeout") and dict(ma.labels) == {}
    assert ma.traceparent == ctx.traceparent and ma.HasField("created_at")
    assert not ma.HasField("fan_in") and ma.run == 0
    assert mb.child_failure == task_pb2.CHILD_FAILURE_POLICY_CONTINUE
    assert mb.cancel_policy == task_pb2.CANCEL_POLICY_ABANDON
    assert mb.max_attempts == 7 and dict(mb.labels) == {"team": "search"}
    assert mb.timeout.ToTimedelta() == datetime.timedelta(seconds=90)
    assert from_value(mb.input) == [1, "two"]
    assert mc.child_failure == task_pb2.CHILD_FAILURE_POLICY_IGNORE
    assert mc.timeout.ToTimedelta() == datetime.timedelta(seconds=1.5)
    ctx.fan_in_as("py.summary")
    assert ctx._fan_in_kind == "py.summary"


@pytest.mark.parametrize(
    "kind, kw",
    [
        ("Py.Bad", {}),
        ("py..bad", {}),
        ("py.child\n", {}),
        ("py.child", {"on_failure": "explode"}),
        ("py.child", {"on_failure": 9}),
        ("py.child", {"cancel_policy": "ignore"}),
        ("py.child", {"labels": {"Team": "x"}}),
        ("py.child", {"labels": {"team": "a\nb"}}),
        ("py.child", {"labels": {f"k{i}": "v" for i in range(33)}}),
        ("py.child", {"max_attempts": 101}),
        ("py.child", {"max_attempts": -1}),
        ("py.child", {"timeout": 0}),
        ("py.child", {"timeout": "30s"}),
        ("py.child", {"input": {"not json": object()}}),
    ],
)
def test_a_bad_child_is_a_fatal_bad_child_failure(kind: str, kw: dict[str, Any]) -> None:
    ctx = _context()
    input = kw.pop("input", None)
    with pytest.raises(TaskFailure) as e:
        ctx.spawn(kind, input, **kw)
    assert e.value.code == "BAD_CHILD" and not e.value.retryable, e.value
    assert ctx.spawned == [], "nothing refused is spawned"


def test_a_step_spawns_at_most_1000_children() -> None:
    ctx = _context()
    for i in range(MAX_CHILDREN):
        ctx.spawn("py.child", i)
    with pytest.raises(TaskFailure) as e:
        ctx.spawn("py.child", MAX_CHILDREN)
    assert e.value.code == "BAD_CHILD" and "at most 1000" in e.value.message
    assert len(ctx.spawned) == MAX_CHILDREN
    with pytest.raises(TaskFailure) as e:
        ctx.fan_in_as("Not A Kind")
    assert e.value.code == "BAD_CHILD"


def test_a_fan_in_context_has_the_results() -> None:
    fan_in = messages_pb2.FanIn(waiting_seq=9)
    ok = fan_in.children.add(task_id="a", kind="py.child", state=task_pb2.TASK_STATE_SUCCEEDED)
    ok.output.struct_value.update({"n": 1})
    bad = fan_in.children.add(task_id="b", kind="py.child", state=task_pb2.TASK_STATE_FAILED)
    bad.error.code = "BOOM"
    fan_in.step_output.string_value = "step"
    ctx = _context(fan_in=fan_in)
    assert ctx.step_output == "step"
    assert ctx.children == [
        ChildResult("a", "py.child", task_pb2.TASK_STATE_SUCCEEDED, {"n": 1}, None),
        ChildResult("b", "py.child", task_pb2.TASK_STATE_FAILED, None, bad.error),
    ]
    assert [c.state_name for c in ctx.children] == ["SUCCEEDED", "FAILED"]
    assert [c.succeeded for c in ctx.children] == [True, False]


def test_the_client_refuses_unknown_policies_before_any_call() -> None:
    # Nothing listens there: a call would fail with UNAVAILABLE, not ValueError.
    with Client("127.0.0.1:1", timeout=2) as tw:
        parent = str(uuid.uuid4())
        with pytest.raises(ValueError, match="child_failure"):
            tw.submit("demo.echo", 1, parent_id=parent, child_failure="explode")
        with pytest.raises(ValueError, match="cancel_policy"):
            tw.submit_task("demo.echo", 1, cancel_policy="ignore")
        with pytest.raises(ValueError, match="child_failure"):
            tw.submit("demo.echo", 1, parent_id=parent, child_failure=17)
        with pytest.raises(TypeError):
            tw.submit("demo.echo", 1, parent_id=parent, child_failure=True)
        with pytest.raises(ValueError, match=r"tasks\[1\]: cancel_policy"):
            tw.submit_tasks([TaskSpec("demo.echo"), TaskSpec("demo.echo", cancel_policy="cascade-ish")])
        with pytest.raises(ValueError, match=r"tasks\[0\]: child_failure"):
            tw.submit_tasks([{"kind": "demo.echo", "parent_id": parent, "child_failure": "nope"}])


# -- a Python parent and its children ------------------------------------------------


async def test_a_python_parent_fans_out_five_children_and_fans_in_their_results(dev: Dev) -> None:
    parent_kind, child_kind = _kind("parent"), _kind("child")
    steps: list[str] = []

    async def parent(ctx: TaskContext) -> Any:
        if ctx.children is None:
            steps.append("first")
            await ctx.progress(0.25, "spawning")
            ids = [ctx.spawn(child_kind, {"i": i}) for i in range(5)]
            return {"spawned": ids}
        steps.append(f"fan-in {ctx.attempt}")
        await ctx.progress(0.5, "summing")
        outputs = [c.output for c in ctx.children]
        return {
            "ids": [c.task_id for c in ctx.children],
            "states": [c.state_name for c in ctx.children],
            "squares": [o["square"] for o in outputs],
            "sum": sum(o["square"] for o in outputs),
            "step_output": ctx.step_output,
        }

    async def child(ctx: TaskContext) -> Any:
        i = ctx.input["i"]
        await ctx.sleep(0.05 * (5 - i))  # the last started ends first
        await ctx.progress(1.0, f"child {i}")
        return {"square": i * i}

    async with _worker(dev, {parent_kind: parent, child_kind: child}), AsyncClient(dev.address, timeout=15) as tw:
        task_id = await tw.submit(parent_kind, {"n": 5}, max_attempts=3)
        done = await async_final_status(tw, task_id, timeout=WAIT)
        kids = await _children(tw, task_id)

    assert state_name(done.state) == "SUCCEEDED", done
    assert steps == ["first", "fan-in 1"], "each step ran once"
    out = from_value(done.output)
    spawned = out["step_output"]["spawned"]
    assert len(spawned) == 5 and all(_is_uuid7(i) for i in spawned)
    assert out["ids"] == spawned, "the fan-in got every child, in the order they were spawned"
    assert out["states"] == ["SUCCEEDED"] * 5
    assert out["squares"] == [0, 1, 4, 9, 16] and out["sum"] == 30
    assert done.progress.fraction == 1.0
    assert (done.children.total, done.children.succeeded, done.children.active) == (5, 5, 0), done.children
    assert (done.children.failed, done.children.cancelled) == (0, 0)

    assert [k.id for k in kids] == spawned
    for i, k in enumerate(kids):
        assert k.parent_id == task_id and k.kind == child_kind, k
        assert state_name(k.state) == "SUCCEEDED" and from_value(k.output) == {"square": i * i}
        assert k.max_attempts == 3, "a child has its parent's max_attempts unless told"
        assert k.child_failure == task_pb2.CHILD_FAILURE_POLICY_FAIL_PARENT

    # The parent's history as the Rust worker writes it: the claim, the step's progress,
    # WAITING (with the step's progress, the children and the step's output), then the
    # fan-in step's claim (attempt 1 again, progress 0 "fan-in") and events, each with
    # fan_in_of = the WAITING event's seq.
    events = await _events(dev, task_id)
    got = [(state_name(e.state), e.attempt, e.fan_in_of, e.progress.message) for _, e in events]
    waiting_seq = events[2][0]
    assert got == [
        ("RUNNING", 1, 0, ""),
        ("RUNNING", 1, 0, "spawning"),
        ("WAITING", 1, 0, "waiting for 5 children"),
        ("RUNNING", 1, waiting_seq, "fan-in"),
        ("RUNNING", 1, waiting_seq, "summing"),
        ("SUCCEEDED", 1, waiting_seq, "done"),
    ], got
    waiting = events[2][1]
    assert waiting.progress.fraction == 0.25
    assert [c.task_id for c in waiting.children] == spawned
    assert all(c.parent_id == task_id and c.kind == child_kind for c in waiting.children)
    assert from_value(waiting.output) == {"spawned": spawned}
    assert waiting.fan_in_kind == ""
    assert events[3][1].progress.fraction == 0.0 and events[3][1].worker, "the fan-in's claim names the worker"


@pytest.mark.parametrize("policy", ["fail_parent", "ignore", "continue"])
async def test_a_failing_child_does_what_its_policy_says(dev: Dev, policy: str) -> None:
    """Three children, the middle one fails (fatally). fail_parent: the parent FAILS at
    once with CHILD_FAILED and its other children (still running) are cancelled; no
    fan-in runs. ignore: the fan-in (a kind of its own, ``fan_in_as``) gets the other
    two. continue: it gets all three, the failed one with its error."""
    parent_kind, child_kind, summary_kind = _kind("parent"), _kind("child"), _kind("summary")
    fan_ins: list[list[ChildResult]] = []
    slow = 30.0 if policy == "fail_parent" else 0.2

    async def parent(ctx: TaskContext) -> Any:
        for i in range(3):
            ctx.spawn(child_kind, {"i": i, "fail": i == 1}, on_failure=policy, max_attempts=1)
        ctx.fan_in_as(summary_kind)
        return {"policy": policy}

    async def summary(ctx: TaskContext) -> Any:
        assert ctx.children is not None
        fan_ins.append(ctx.children)
        return {
            "step_output": ctx.step_output,
            "results": [
                {"i": None if c.output is None else c.output["i"], "state": c.state_name,
                 "error": c.error.code if c.error is not None else None}
                for c in ctx.children
            ],
        }

    async def child(ctx: TaskContext) -> Any:
        if ctx.input["fail"]:
            await ctx.sleep(0.3)
            raise TaskFailure.fatal("this child fails", code="PY_CHILD_FAILED")
        await ctx.sleep(slow)
        return {"i": ctx.input["i"]}

    handlers = {parent_kind: parent, child_kind: child, summary_kind: summary}
    async with _worker(dev, handlers), AsyncClient(dev.address, timeout=15) as tw:
        task_id = await tw.submit(parent_kind, None)
        done = await async_final_status(tw, task_id, timeout=WAIT)

        async def children() -> list[task_pb2.Task]:
            return await _children(tw, task_id)

        kids = await async_eventually(
            children, lambda ks: len(ks) == 3 and all(is_terminal(k.state) for k in ks), timeout=WAIT
        )
        done = await tw.status(task_id)

    states = [state_name(k.state) for k in kids]
    policies = {k.child_failure for k in kids}
    assert policies == {task_pb2.ChildFailurePolicy.Value(f"CHILD_FAILURE_POLICY_{policy.upper()}")}
    if policy == "fail_parent":
        assert state_name(done.state) == "FAILED", done
        assert done.error.code == "CHILD_FAILED" and not done.error.retryable, done.error
        assert kids[1].id in done.error.message and "PY_CHILD_FAILED" in done.error.message, done.error
        assert states == ["CANCELLED", "FAILED", "CANCELLED"], states
        assert fan_ins == [], "no fan-in runs for a failed parent"
        counts = done.children
        assert (counts.total, counts.failed, counts.cancelled, counts.active) == (3, 1, 2, 0), counts
        return
    assert state_name(done.state) == "SUCCEEDED", done
    assert states == ["SUCCEEDED", "FAILED", "SUCCEEDED"], states
    assert len(fan_ins) == 1
    out = from_value(done.output)
    assert out["step_output"] == {"policy": policy}
    if policy == "ignore":
        assert out["results"] == [
            {"i": 0, "state": "SUCCEEDED", "error": None},
            {"i": 2, "state": "SUCCEEDED", "error": None},
        ]
        assert [c.task_id for c in fan_ins[0]] == [kids[0].id, kids[2].id]
    else:
        assert out["results"] == [
            {"i": 0, "state": "SUCCEEDED", "error": None},
            {"i": None, "state": "FAILED", "error": "PY_CHILD_FAILED"},
            {"i": 2, "state": "SUCCEEDED", "error": None},
        ]
        assert [c.task_id for c in fan_ins[0]] == [k.id for k in kids]
        assert fan_ins[0][1].error is not None and not fan_ins[0][1].error.retryable
    counts = done.children
    assert (counts.total, counts.succeeded, counts.failed, counts.active) == (3, 2, 1, 0), counts
    # The fan-in ran under its own kind: its events say so, and carry fan_in_of.
    events = await _events(dev, task_id)
    waiting = [(seq, e) for seq, e in events if e.state == task_pb2.TASK_STATE_WAITING]
    assert len(waiting) == 1 and waiting[0][1].fan_in_kind == summary_kind
    after = [e for seq, e in events if seq > waiting[0][0]]
    assert after and {e.kind for e in after} == {summary_kind}
    assert {e.fan_in_of for e in after} == {waiting[0][0]}


async def test_python_and_rust_children_both_ways(dev: Dev) -> None:
    """A Python parent's children served by the Rust worker (demo.echo), and a Rust
    parent (demo.fanout) whose children a Python worker serves."""
    parent_kind, child_kind = _kind("parent"), _kind("child")

    async def parent(ctx: TaskContext) -> Any:
        if ctx.children is None:
            for word in ("hello", "world"):
                ctx.spawn("demo.echo", {"word": word})
            return None
        return " ".join(c.output["word"] for c in ctx.children)

    async def child(ctx: TaskContext) -> Any:
        return {"doubled": ctx.input["i"] * 2}

    async with _worker(dev, {parent_kind: parent, child_kind: child}), AsyncClient(dev.address, timeout=15) as tw:
        py_parent = await tw.submit(parent_kind, None)
        rust_parent = await tw.submit("demo.fanout", {"children": 3, "child_kind": child_kind})
        py_done = await async_final_status(tw, py_parent, timeout=WAIT)
        rust_done = await async_final_status(tw, rust_parent, timeout=WAIT)

    assert state_name(py_done.state) == "SUCCEEDED", py_done
    assert from_value(py_done.output) == "hello world"
    assert state_name(rust_done.state) == "SUCCEEDED", rust_done
    out = from_value(rust_done.output)
    assert (out["received"], out["succeeded"]) == (3, 3), out
    assert [r["output"] for r in out["results"]] == [{"doubled": 0}, {"doubled": 2}, {"doubled": 4}]


async def test_children_too_large_for_one_event_fail_the_parent(dev: Dev) -> None:
    parent_kind = _kind("big")
    ran: list[int] = []

    async def parent(ctx: TaskContext) -> Any:
        ran.append(ctx.attempt)
        for i in range(10):
            ctx.spawn("demo.echo", {"i": i, "pad": "x" * 100_000})
        return None

    async with _worker(dev, {parent_kind: parent}), AsyncClient(dev.address, timeout=15) as tw:
        task_id = await tw.submit(parent_kind, None, max_attempts=3)
        done = await async_final_status(tw, task_id, timeout=WAIT)
        kids = await _children(tw, task_id)
    assert state_name(done.state) == "FAILED", done
    assert done.error.code == "CHILDREN_TOO_LARGE" and not done.error.retryable, done.error
    assert "10 children" in done.error.message and str(900 * 1024) in done.error.message
    assert ran == [1], "fatal: not retried"
    assert kids == [], "no child was created"
    assert not done.HasField("children")


# -- the claim rules of a parent's steps ----------------------------------------------


async def test_a_redelivered_first_step_after_waiting_is_acked_not_run_again(dev: Dev) -> None:
    """The parent's WAITING event is stored but its ack is lost (dropped here): JetStream
    redelivers the first step's message after ack_wait, and that delivery only acks it.
    A fan-in message for another WAITING event (published by the test meanwhile) is
    acked without running too. Then the children end and the real fan-in runs once."""
    parent_kind, child_kind = _kind("parent"), _kind("child")
    ack_wait = 1.5
    steps: list[str] = []
    release = asyncio.Event()

    async def parent(ctx: TaskContext) -> Any:
        if ctx.children is None:
            steps.append("first")
            ctx.spawn(child_kind, {"i": 0})
            ctx.spawn(child_kind, {"i": 1})
            return "step"
        steps.append(f"fan-in {ctx.attempt}")
        return [c.output for c in ctx.children]

    async def child(ctx: TaskContext) -> Any:
        await asyncio.wait_for(release.wait(), timeout=WAIT)
        return ctx.input["i"]

    async with nats_connection(dev.nats_url) as nc, AsyncClient(dev.address, timeout=15) as tw:
        jsm, js = nc.jsm(timeout=5), nc.jetstream(timeout=5)
        async with _worker(dev, {parent_kind: parent, child_kind: child}, ack_wait=ack_wait) as worker:
            deliveries: list[tuple[int, bool]] = []
            dropped: list[str] = []
            process, ack = worker._process, worker._ack

            async def spy(msg: Msg) -> None:
                body = messages_pb2.TaskMessage.FromString(msg.data)
                if body.kind == parent_kind:
                    deliveries.append((int(msg.metadata.num_delivered), body.HasField("fan_in")))
                await process(msg)

            async def lossy_ack(msg: Msg) -> None:
                body = messages_pb2.TaskMessage.FromString(msg.data)
                if body.kind == parent_kind and not body.HasField("fan_in") and not dropped:
                    dropped.append(body.task_id)  # the ack of the delivery that wrote WAITING
                    return
                await ack(msg)

            worker._process = spy  # type: ignore[method-assign]
            worker._ack = lossy_ack  # type: ignore[method-assign]

            task_id = await tw.submit(parent_kind, None)

            async def parent_consumer() -> Any:
                return await jsm.consumer_info("TASKWIRE_TASKS", kind_consumer(parent_kind))

            # The redelivery (delivery 2) comes after ack_wait and is acked at once.
            info = await async_eventually(
                parent_consumer, lambda i: (2, False) in deliveries and i.num_ack_pending == 0, timeout=WAIT
            )
            assert dropped == [task_id]
            assert (2, False) in deliveries and info.num_ack_pending == 0, (deliveries, info)
            events = await _events(dev, task_id)
            assert [state_name(e.state) for _, e in events] == ["RUNNING", "WAITING"], events
            waiting_seq = events[-1][0]

            # A fan-in message that follows no WAITING event of this task: acked, not run.
            stale = messages_pb2.TaskMessage(
                task_id=task_id,
                kind=parent_kind,
                max_attempts=3,
                fan_in=messages_pb2.FanIn(waiting_seq=waiting_seq - 1),
            )
            await js.publish(
                f"taskwire.tasks.{parent_kind}",
                stale.SerializeToString(),
                headers={"Nats-Msg-Id": f"{message_id(stale)}:{uuid.uuid4().hex}", "Taskwire-Schema": "1"},
            )
            await async_eventually(
                parent_consumer,
                lambda i: deliveries.count((1, True)) == 1 and i.num_ack_pending == 0 and i.num_pending == 0,
                timeout=WAIT,
            )
            assert steps == ["first"], "neither message ran a step"
            assert len(await _events(dev, task_id)) == 2, "nothing was written"

            release.set()
            done = await async_final_status(tw, task_id, timeout=WAIT)
            assert state_name(done.state) == "SUCCEEDED", done
            assert from_value(done.output) == [0, 1]
            assert steps == ["first", "fan-in 1"]
            await asyncio.sleep(ack_wait + 0.5)  # nothing is redelivered after the fan-in
            info = await parent_consumer()
            assert info.num_ack_pending == 0 and info.num_pending == 0, info
        events = await _events(dev, task_id)
        assert [(state_name(e.state), e.fan_in_of) for _, e in events] == [
            ("RUNNING", 0),
            ("WAITING", 0),
            ("RUNNING", waiting_seq),
            ("SUCCEEDED", waiting_seq),
        ]
        assert steps == ["first", "fan-in 1"]


async def test_an_attempt_writes_on_after_events_of_its_own_but_not_after_anothers(dev: Dev) -> None:
    """A claimed attempt whose append loses to an event it did not write itself goes on
    after it when that event is still this attempt running (same attempt, same
    ``fan_in_of``, RUNNING: a cut-off append of its own, or the api's announcement of a
    child a client added), as the Rust worker's writer does; after anything else (here
    a RUNNING event of another step, ``fan_in_of`` set) the attempt is stopped."""
    kind = _kind("resync")
    started, go_on, go_again = asyncio.Event(), asyncio.Event(), asyncio.Event()
    outcomes: list[str] = []

    async def handler(ctx: TaskContext) -> Any:
        started.set()
        await asyncio.wait_for(go_on.wait(), timeout=WAIT)
        await ctx.progress(0.5, "after an event of its own")
        outcomes.append("written")
        await asyncio.wait_for(go_again.wait(), timeout=WAIT)
        try:
            await ctx.progress(0.7, "after another step's event")
        except Exception as e:
            outcomes.append(type(e).__name__)
            raise
        outcomes.append("written again")
        return None

    async with nats_connection(dev.nats_url) as nc, AsyncClient(dev.address, timeout=15) as tw:
        js = nc.jetstream(timeout=5)

        async def append(task_id: str, state: int, fan_in_of: int) -> None:
            [(last, _)] = (await _events(dev, task_id))[-1:]
            ev = messages_pb2.Event(task_id=task_id, state=state, attempt=1, kind=kind, fan_in_of=fan_in_of)  # type: ignore[arg-type]
            ev.time.GetCurrentTime()
            await js.publish(
                f"taskwire.events.{task_id}",
                ev.SerializeToString(),
                headers={"Nats-Expected-Last-Subject-Sequence": str(last), "Taskwire-Schema": "1"},
            )

        async with _worker(dev, {kind: handler}, ack_wait=1.5):
            task_id = await tw.submit(kind, None)
            await asyncio.wait_for(started.wait(), timeout=WAIT)
            await append(task_id, task_pb2.TASK_STATE_RUNNING, 0)
            go_on.set()
            await async_eventually(lambda: asyncio.sleep(0, outcomes), bool, timeout=WAIT)
            assert outcomes == ["written"]
            await append(task_id, task_pb2.TASK_STATE_RUNNING, 12345)
            go_again.set()
            await async_eventually(lambda: asyncio.sleep(0, outcomes), lambda o: len(o) > 1, timeout=WAIT)
            assert outcomes == ["written", "Stopped"]
            await append(task_id, task_pb2.TASK_STATE_CANCELLED, 0)  # so its message is acked
            done = await async_final_status(tw, task_id, timeout=WAIT)
        assert state_name(done.state) == "CANCELLED"
        events = await _events(dev, task_id)
        assert [(state_name(e.state), e.fan_in_of, e.progress.message) for _, e in events] == [
            ("RUNNING", 0, ""),
            ("RUNNING", 0, ""),
            ("RUNNING", 0, "after an event of its own"),
            ("RUNNING", 12345, ""),
            ("CANCELLED", 0, ""),
        ]


async def test_children_a_client_adds_to_a_running_python_parent(dev: Dev) -> None:
    """A client adds children to a task a Python worker runs (the api may announce each
    in the parent's history, keeping its attempt and state): the attempt reports on
    and succeeds on its first attempt; the children are listed and counted."""
    kind = _kind("open")
    started, go_on = asyncio.Event(), asyncio.Event()
    attempts: list[int] = []

    async def handler(ctx: TaskContext) -> Any:
        attempts.append(ctx.attempt)
        await ctx.progress(0.1, "started")
        started.set()
        await asyncio.wait_for(go_on.wait(), timeout=WAIT)
        await ctx.progress(0.9, "after the clients' children")
        return "ok"

    async with _worker(dev, {kind: handler}), AsyncClient(dev.address, timeout=15) as tw:
        task_id = await tw.submit(kind, None)
        await asyncio.wait_for(started.wait(), timeout=WAIT)
        results = await tw.submit_tasks(
            [TaskSpec("demo.echo", {"n": n}, parent_id=task_id, child_failure="ignore") for n in range(3)]
        )
        assert all(r.ok for r in results), results
        go_on.set()
        done = await async_final_status(tw, task_id, timeout=WAIT)
        for r in results:
            await async_final_status(tw, r.task_id, timeout=WAIT)
        kids = await _children(tw, task_id)
        done = await tw.status(task_id)
    assert state_name(done.state) == "SUCCEEDED" and from_value(done.output) == "ok", done
    assert attempts == [1] and done.attempt == 1
    assert [k.id for k in kids] == [r.task_id for r in results]
    assert (done.children.total, done.children.succeeded) == (3, 3), done.children
    progress = [e.progress.message for _, e in await _events(dev, task_id) if e.progress.message]
    assert progress[:2] == ["started", "after the clients' children"], progress


# -- the client -----------------------------------------------------------------------


def test_client_children_of_a_running_task(dev: Dev, client: Client) -> None:
    """A client adds children to a running task (demo.sleep, Rust): listed under it,
    counted on its record, each with its policies; bad parents refused with clear codes."""
    parent = client.submit("demo.sleep", {"seconds": 30, "steps": 30}, cancel_policy="abandon")
    child = client.submit("demo.echo", {"from": "a client"}, parent_id=parent, child_failure="ignore")
    results = client.submit_tasks(
        [
            TaskSpec("demo.echo", {"n": 1}, parent_id=parent, child_failure="continue", cancel_policy="cascade"),
            {"kind": "demo.echo", "input": {"n": 2}, "parent_id": parent},
            TaskSpec("demo.echo", {"n": 3}, parent_id="not-a-task"),
        ]
    )
    assert [r.ok for r in results] == [True, True, False], results
    assert results[2].status_code == grpc.StatusCode.INVALID_ARGUMENT and "parent_id" in results[2].message
    ids = [child, results[0].task_id, results[1].task_id]

    page = client.list(parent_id=parent, page_size=100)
    assert {t.id for t in page.tasks} == set(ids)
    assert {t.id for t in client.iter_tasks(parent_id=parent, page_size=1)} == set(ids)
    for tid in ids:
        final_status(client, tid, timeout=WAIT)
    kids = {t.id: t for t in client.iter_tasks(parent_id=parent)}
    assert {tid: kids[tid].parent_id for tid in ids} == {tid: parent for tid in ids}
    assert [kids[tid].child_failure for tid in ids] == [
        task_pb2.CHILD_FAILURE_POLICY_IGNORE,
        task_pb2.CHILD_FAILURE_POLICY_CONTINUE,
        task_pb2.CHILD_FAILURE_POLICY_UNSPECIFIED,
    ]
    assert kids[ids[1]].cancel_policy == task_pb2.CANCEL_POLICY_CASCADE
    assert all(state_name(kids[tid].state) == "SUCCEEDED" for tid in ids)

    p = client.status(parent)
    assert p.cancel_policy == task_pb2.CANCEL_POLICY_ABANDON and p.parent_id == ""
    assert p.HasField("children")
    assert (p.children.total, p.children.succeeded, p.children.active) == (3, 3, 0), p.children
    assert not client.status(child).HasField("children"), "a task without children has no counts"

    def refused(code: grpc.StatusCode, **kw: Any) -> TaskwireError:
        with pytest.raises(TaskwireError) as e:
            client.submit("demo.echo", 1, **kw)
        assert e.value.code == code, e.value
        assert e.value.details
        return e.value

    assert "parent_id" in refused(grpc.StatusCode.INVALID_ARGUMENT, parent_id="not-a-task").details
    assert "child_failure" in refused(grpc.StatusCode.INVALID_ARGUMENT, child_failure="ignore").details
    refused(grpc.StatusCode.NOT_FOUND, parent_id=str(uuid.uuid4()))
    with pytest.raises(TaskwireError) as e:
        client.list(parent_id="not-a-task")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT

    client.cancel(parent)
    refused(grpc.StatusCode.FAILED_PRECONDITION, parent_id=parent)
    assert len(client.list(parent_id=parent).tasks) == 3, "nothing refused was written"


async def test_async_client_children(dev: Dev) -> None:
    async with AsyncClient(dev.address, timeout=15) as tw:
        parent = await tw.submit("demo.sleep", {"seconds": 30, "steps": 30})
        child = await tw.submit("demo.echo", "hi", parent_id=parent, child_failure="fail_parent")
        resp = await tw.submit_task("demo.echo", "there", parent_id=parent, child_failure="ignore")
        [batched] = await tw.submit_tasks([TaskSpec("demo.echo", 3, parent_id=parent, child_failure="continue")])
        assert batched.ok, batched
        ids = {child, resp.task_id, batched.task_id}
        page = await tw.list(parent_id=parent)
        assert {t.id for t in page.tasks} == ids
        assert {t.id async for t in tw.iter_tasks(parent_id=parent, page_size=2)} == ids
        for tid in ids:
            await async_final_status(tw, tid, timeout=WAIT)
        p = await tw.status(parent)
        assert (p.children.total, p.children.succeeded) == (3, 3), p.children
        with pytest.raises(TaskwireError) as e:
            await tw.submit("demo.echo", 1, parent_id="nope")
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(ValueError):
            await tw.submit("demo.echo", 1, parent_id=parent, child_failure="sometimes")
        cancelled = await tw.cancel(parent)
        assert state_name(cancelled.state) == "CANCELLED"


# -- tree watch (WatchTaskRequest.tree; server side: commit 0f206fd "Tree watch") ------


def test_a_tree_watch_ends_with_the_watched_tasks_end_only() -> None:
    """The client's bookkeeping of a tree watch: a descendant's terminal event does not
    end it, the watched task's does; the request asks for the tree from the last seq."""
    from taskwire.client import _Resume

    r = _Resume("root", 0, 3, 0.1, 0.1, None, tree=True)
    assert r.request().tree and r.request().after_seq == 0
    assert r.accept(task_pb2.TaskEvent(task_id="kid", seq=5, state=task_pb2.TASK_STATE_SUCCEEDED))
    assert not r.finished and r.request().after_seq == 5
    assert not r.accept(task_pb2.TaskEvent(task_id="kid", seq=5)), "a repeat is dropped"
    assert r.accept(task_pb2.TaskEvent(task_id="root", seq=9, state=task_pb2.TASK_STATE_SUCCEEDED))
    assert r.finished
    plain = _Resume("root", 0, 3, 0.1, 0.1, None)
    assert not plain.request().tree


def _tree_checks(events: list[task_pb2.TaskEvent], parent: str, parent_kind: str, child_kind: str) -> set[str]:
    """What every tree watch of a finished parent shows; returns the children seen."""
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs)), f"one order, by seq: {seqs}"
    assert events[-1].task_id == parent and state_name(events[-1].state) == "SUCCEEDED"
    for e in events:
        if e.task_id == parent:
            assert (e.parent_id, e.kind) == ("", parent_kind), e
        else:
            assert (e.parent_id, e.kind) == (parent, child_kind), e
    kids = {e.task_id for e in events if e.task_id != parent}
    ended = [e for e in events if e.task_id != parent and is_terminal(e.state)]
    assert {e.task_id for e in ended} == kids, "every child's end is in the tree"
    assert events.index(ended[0]) < len(events) - 1, "a child's end did not end the watch"
    return kids


def test_tree_watch_of_a_rust_parent_replays_and_resumes(dev: Dev, client: Client) -> None:
    parent = client.submit("demo.fanout", {"children": 3, "child_kind": "demo.sleep",
                                           "child_input": {"seconds": 0.3, "steps": 3}})
    live = list(client.watch(parent, tree=True, timeout=WAIT))
    kids = _tree_checks(live, parent, "demo.fanout", "demo.sleep")
    assert kids == {t.id for t in client.list(parent_id=parent).tasks}

    # A finished tree from the start: every node's history, then the parent's end.
    full = list(client.watch(parent, tree=True, timeout=WAIT))
    assert _tree_checks(full, parent, "demo.fanout", "demo.sleep") == kids
    assert [e.seq for e in live] == [e.seq for e in full][-len(live) :]
    # Resumed from the middle: exactly the rest, nothing repeated.
    mid = full[len(full) // 2].seq
    rest = list(client.watch(parent, mid, tree=True, timeout=WAIT))
    assert rest == [e for e in full if e.seq > mid]
    # After the parent's end there is nothing left to wait for.
    assert list(client.watch(parent, full[-1].seq, tree=True, timeout=WAIT)) == []
    # A plain watch of the same parent has its events only, without parent or kind.
    plain = list(client.watch(parent, 1, timeout=WAIT))
    assert {e.task_id for e in plain} == {parent} and {(e.parent_id, e.kind) for e in plain} == {("", "")}


async def test_async_tree_watch_follows_a_python_parent_and_its_children(dev: Dev) -> None:
    parent_kind, child_kind = _kind("parent"), _kind("child")

    async def parent(ctx: TaskContext) -> Any:
        if ctx.children is None:
            for i in range(3):
                ctx.spawn(child_kind, {"i": i})
            return None
        return sorted(c.output for c in ctx.children)

    async def child(ctx: TaskContext) -> Any:
        for step in range(1, 4):
            await ctx.sleep(0.1)
            await ctx.progress(step / 3, f"child {ctx.input['i']} step {step}")
        return ctx.input["i"]

    async with _worker(dev, {parent_kind: parent, child_kind: child}), AsyncClient(dev.address, timeout=15) as tw:
        task_id = await tw.submit(parent_kind, None)
        watch = tw.watch(task_id, tree=True, timeout=WAIT)
        assert watch.tree
        live = [e async for e in watch]
        full = [e async for e in tw.watch(task_id, tree=True, timeout=WAIT)]
        kids = await _children(tw, task_id)
    assert _tree_checks(full, task_id, parent_kind, child_kind) == {k.id for k in kids}
    assert [e.seq for e in live] == [e.seq for e in full][-len(live) :]
    progress = [e.progress.message for e in full if e.task_id != task_id and e.progress.message.startswith("child")]
    assert len(progress) == 9, progress
    waiting = [e for e in full if e.task_id == task_id and state_name(e.state) == "WAITING"]
    assert len(waiting) == 1 and waiting[0].progress.message == "waiting for 3 children"
    fan_in = [e for e in full if e.task_id == task_id and e.progress.message == "fan-in"]
    assert len(fan_in) == 1
    assert all(e.seq < fan_in[0].seq for e in full if e.task_id != task_id), "the fan-in follows every child"

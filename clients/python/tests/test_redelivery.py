"""Redeliveries and the attempt number (docs/protocol.md §5 steps 2 and 5), against dev's
NATS with an in-process Worker: a redelivered task whose attempt still runs (on a live
worker that answers on ``taskwire.running.<id>``, or in this process) is left alone,
and one whose worker is gone is taken over with attempt = the history's newest attempt
+ 1, whatever the delivery count.

The test itself plays the other worker: it binds the kind's consumer, takes a delivery,
appends RUNNING with ``Nats-Expected-Last-Subject-Sequence`` and sends no heartbeats,
so JetStream redelivers the task to the Worker after ``ack_wait``. Each test has a kind
of its own, so nothing else pulls its consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api as js_api

from conftest import Dev
from helpers import async_eventually, nats_connection, running_worker, stored_messages
from taskwire import AsyncClient
from taskwire.client import state_name
from taskwire.internal.v1 import messages_pb2
from taskwire.v1 import task_pb2
from taskwire.worker import TaskContext, Worker, kind_consumer

ACK_WAIT = 1.5  # seconds; the Worker's and the test's consumer config alike


def _kind(name: str) -> str:
    return f"py.{name}-{uuid.uuid4().hex[:8]}"


def _consumer_config(kind: str) -> js_api.ConsumerConfig:
    """The kind's consumer exactly as the Worker configures it (docs/protocol.md §3)."""
    return js_api.ConsumerConfig(
        durable_name=kind_consumer(kind),
        filter_subject=f"taskwire.tasks.{kind}",
        deliver_policy=js_api.DeliverPolicy.ALL,
        ack_policy=js_api.AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT,
        max_deliver=101,
        max_ack_pending=10_000,
    )


class OtherWorker:
    """The test as a second worker of ``kind``: takes deliveries and writes history."""

    def __init__(self, nc: NATS, kind: str) -> None:
        self.nc = nc
        self.kind = kind
        self.js = nc.jetstream(timeout=5)
        self.jsm = nc.jsm(timeout=5)
        self.sub: Any = None

    async def bind(self) -> None:
        await self.js.add_consumer("TASKWIRE_TASKS", config=_consumer_config(self.kind))
        self.sub = await self.js.pull_subscribe_bind(durable=kind_consumer(self.kind), stream="TASKWIRE_TASKS")

    async def take(self, task_id: str) -> Msg:
        (msg,) = await self.sub.fetch(batch=1, timeout=15)
        assert messages_pb2.TaskMessage.FromString(msg.data).task_id == task_id
        return msg

    async def append(self, task_id: str, state: int, attempt: int, expected: int) -> int:
        ev = messages_pb2.Event(task_id=task_id, state=state, attempt=attempt, kind=self.kind)  # type: ignore[arg-type]
        ev.time.GetCurrentTime()
        ack = await self.js.publish(
            f"taskwire.events.{task_id}",
            ev.SerializeToString(),
            headers={"Nats-Expected-Last-Subject-Sequence": str(expected), "Taskwire-Schema": "1"},
        )
        return int(ack.seq)

    async def history(self, task_id: str) -> list[tuple[str, int]]:
        """(state, attempt) of every stored event of the task, oldest first."""
        stored = await stored_messages(self.jsm, "TASKWIRE_EVENTS", f"taskwire.events.{task_id}")
        events = [messages_pb2.Event.FromString(raw.data or b"") for raw in stored]
        return [(state_name(ev.state), ev.attempt) for ev in events]

    async def consumer(self) -> Any:
        return await self.jsm.consumer_info("TASKWIRE_TASKS", kind_consumer(self.kind))


async def _logged(caplog: pytest.LogCaptureFixture, text: str, timeout: float) -> bool:
    async def found() -> bool:
        return any(text in r.getMessage() for r in caplog.records)

    return bool(await async_eventually(found, bool, timeout))


def _running_worker(
    dev: Dev, kind: str, handler: Callable[[TaskContext], Awaitable[Any]]
) -> contextlib.AbstractAsyncContextManager[Worker]:
    """A Worker for ``kind`` on dev's NATS, pulling until the block ends, with this
    module's short ACK_WAIT (what has JetStream redeliver here)."""
    return running_worker(dev.nats_url, kind, handler, ack_wait=ACK_WAIT, shutdown_grace=1)


def _spy_deliveries(worker: Worker) -> list[int]:
    """The delivery count of every message the Worker handles from now on."""
    seen: list[int] = []
    process = worker._process

    async def spy(msg: Msg) -> None:
        seen.append(int(msg.metadata.num_delivered))
        await process(msg)

    worker._process = spy  # type: ignore[method-assign]
    return seen


async def _submit(dev: Dev, kind: str, max_attempts: int) -> str:
    async with AsyncClient(dev.address, timeout=15) as client:
        resp = await client.submit_task(kind, {"n": 1}, max_attempts=max_attempts)
    return str(resp.task_id)


@pytest.fixture
def worker_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="taskwire.worker")
    return caplog


async def test_redelivery_is_left_to_a_live_attempt_that_answers(dev: Dev, worker_logs: pytest.LogCaptureFixture) -> None:
    kind = _kind("live")
    ran: list[int] = []

    async def handler(ctx: TaskContext) -> Any:
        ran.append(ctx.attempt)
        return {}

    async with nats_connection(dev.nats_url) as nc:
        other = OtherWorker(nc, kind)
        await other.bind()
        task_id = await _submit(dev, kind, max_attempts=3)
        first = await other.take(task_id)
        running_seq = await other.append(task_id, task_pb2.TASK_STATE_RUNNING, 1, expected=0)
        asked: list[str] = []

        async def answer(msg: Msg) -> None:  # the live worker: "I run attempt 1"
            asked.append(msg.subject)
            await nc.publish(msg.reply, b"1")

        await nc.subscribe(f"taskwire.running.{task_id}", cb=answer)

        # No heartbeats from us: after ack_wait the Worker gets the task (delivery 2),
        # asks, hears attempt 1 (the newest RUNNING's) and leaves the message alone.
        async with _running_worker(dev, kind, handler):
            assert await _logged(worker_logs, f"task {task_id}: redelivered while its attempt 1 runs on a live worker", 15)
            assert asked and ran == []
            info = await other.consumer()
            assert info.num_ack_pending == 1 and info.num_pending == 0, info  # neither acked nor NAKed
            assert await other.history(task_id) == [("RUNNING", 1)]

            # The live attempt ends and acks its own delivery.
            await other.append(task_id, task_pb2.TASK_STATE_SUCCEEDED, 1, expected=running_seq)
            await first.ack()
            info = await async_eventually(other.consumer, lambda i: i.num_ack_pending == 0, 10)
            assert info.num_ack_pending == 0 and info.num_pending == 0, info
            await asyncio.sleep(ACK_WAIT)  # nothing left to redeliver

        assert ran == []
        assert await other.history(task_id) == [("RUNNING", 1), ("SUCCEEDED", 1)]


async def test_redelivery_nobody_answers_for_is_taken_over_with_the_next_attempt(
    dev: Dev, worker_logs: pytest.LogCaptureFixture
) -> None:
    kind = _kind("gone")
    ran: list[int] = []

    async def handler(ctx: TaskContext) -> Any:
        ran.append(ctx.attempt)
        return {"attempt": ctx.attempt}

    async with nats_connection(dev.nats_url) as nc:
        other = OtherWorker(nc, kind)
        await other.bind()
        task_id = await _submit(dev, kind, max_attempts=2)
        # Two deliveries to us (a NAK in between), then RUNNING 1 and a dead worker:
        # the Worker gets delivery 3, where attempt = delivery count would be 3 > 2
        # (ATTEMPTS_EXHAUSTED); counted in the history it is attempt 2.
        await (await other.take(task_id)).nak()
        second = await other.take(task_id)
        assert second.metadata.num_delivered == 2
        await other.append(task_id, task_pb2.TASK_STATE_RUNNING, 1, expected=0)

        async with _running_worker(dev, kind, handler) as worker:
            delivered = _spy_deliveries(worker)

            async def finished() -> list[tuple[str, int]]:
                return await other.history(task_id)

            hist = await async_eventually(finished, lambda h: h[-1][0] != "RUNNING", 20)
            assert hist == [("RUNNING", 1), ("RUNNING", 2), ("SUCCEEDED", 2)], hist
            assert ran == [2]
            info = await async_eventually(other.consumer, lambda i: i.num_ack_pending == 0, 10)
            assert info.num_ack_pending == 0 and info.num_pending == 0, info
            assert delivered == [3]
        assert not any("leaving it" in r.getMessage() for r in worker_logs.records)


async def test_redelivery_after_the_last_attempt_was_lost_fails_the_task(dev: Dev) -> None:
    kind = _kind("spent")
    ran: list[int] = []

    async def handler(ctx: TaskContext) -> Any:
        ran.append(ctx.attempt)
        return {}

    async with nats_connection(dev.nats_url) as nc:
        other = OtherWorker(nc, kind)
        await other.bind()
        task_id = await _submit(dev, kind, max_attempts=1)
        await other.take(task_id)
        await other.append(task_id, task_pb2.TASK_STATE_RUNNING, 1, expected=0)

        async with _running_worker(dev, kind, handler):

            async def last() -> Any:
                return await other.jsm.get_last_msg("TASKWIRE_EVENTS", f"taskwire.events.{task_id}")

            raw = await async_eventually(
                last, lambda r: messages_pb2.Event.FromString(r.data).state != task_pb2.TASK_STATE_RUNNING, 20
            )
            ev = messages_pb2.Event.FromString(raw.data)
            assert (state_name(ev.state), ev.attempt) == ("FAILED", 1)
            assert ev.error.code == "ATTEMPTS_EXHAUSTED" and ev.error.retryable
            assert ev.error.message == "attempt 1 of 1 was lost with its worker"
            info = await async_eventually(other.consumer, lambda i: i.num_ack_pending == 0, 10)
            assert info.num_ack_pending == 0 and info.num_pending == 0, info
            dlq = await other.jsm.get_last_msg("TASKWIRE_DLQ", f"taskwire.dlq.{kind}")
            assert dlq.headers["Nats-Msg-Id"] == task_id
            assert dlq.headers["Taskwire-Error-Code"] == "ATTEMPTS_EXHAUSTED"
        assert ran == []
        assert await other.history(task_id) == [("RUNNING", 1), ("FAILED", 1)]


async def test_redelivery_to_the_process_running_the_task_leaves_it_and_cancel_still_stops_it(
    dev: Dev, worker_logs: pytest.LogCaptureFixture
) -> None:
    """The Worker's own heartbeats are lost (switched off here), so JetStream redelivers
    the task to the process still running it: that delivery leaves it alone, and the
    running attempt keeps its cancel registration (the handler only sleeps, so only the
    signal can stop it)."""
    kind = _kind("self")
    started = asyncio.Event()
    stopped_at: list[float] = []

    async def handler(ctx: TaskContext) -> Any:
        started.set()
        try:
            await ctx.sleep(60)
        finally:
            stopped_at.append(time.monotonic())
        return {}

    async with nats_connection(dev.nats_url) as nc:
        other = OtherWorker(nc, kind)
        async with _running_worker(dev, kind, handler) as worker:

            async def no_heartbeat(msg: Msg) -> None:
                return None

            worker._wpi = no_heartbeat  # type: ignore[method-assign]
            task_id = await _submit(dev, kind, max_attempts=3)
            await asyncio.wait_for(started.wait(), timeout=15)

            # Step 1: the process answers for the attempt it runs (once claimed).
            reply = await nc.request(f"taskwire.running.{task_id}", b"", timeout=2)
            assert reply.data == b"1"
            with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
                await nc.request(f"taskwire.running.{uuid.uuid4()}", b"", timeout=1)

            assert await _logged(worker_logs, f"task {task_id}: redelivered while its attempt 1 runs here", 15)
            reply = await nc.request(f"taskwire.running.{task_id}", b"", timeout=2)
            assert reply.data == b"1"
            assert stopped_at == []

            async with AsyncClient(dev.address, timeout=15) as client:
                cancelled_at = time.monotonic()
                await client.cancel(task_id)
            await async_eventually(lambda: asyncio.sleep(0, stopped_at), bool, 10)
            assert stopped_at and stopped_at[0] - cancelled_at < 5, "the cancel signal did not reach the attempt"
            info = await async_eventually(other.consumer, lambda i: i.num_ack_pending == 0, 10)
            assert info.num_ack_pending == 0 and info.num_pending == 0, info
        assert await other.history(task_id) == [("RUNNING", 1), ("CANCELLED", 1)]

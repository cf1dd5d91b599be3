"""A kind's limit on tasks running at once across all workers (docs/protocol.md §3):
``Worker(max_running={kind: N})`` sets the kind's consumer's ``max_ack_pending`` to N,
a worker without it keeps what the consumer has, N = 0 lifts the limit; and with the
limit at 2, two workers together never run more than 2 of the kind's tasks at once.
Against dev's NATS, with in-process Workers and tasks submitted through the client.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import pytest
from nats.aio.client import Client as NATS

from conftest import Dev
from taskwire import AsyncClient
from taskwire.client import from_value, state_name
from taskwire.worker import UNLIMITED_RUNNING, TaskContext, Worker, from_args, kind_consumer, main_args

KIND = "py.limited"
ACK_WAIT = 5.0
TASKS = 6
HOLD = 0.3  # seconds each task runs


@contextlib.asynccontextmanager
async def _nats(dev: Dev) -> AsyncIterator[NATS]:
    nc = await nats.connect(dev.nats_url, connect_timeout=5, max_reconnect_attempts=2)
    try:
        yield nc
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def _running_worker(
    dev: Dev, handler: Callable[[TaskContext], Awaitable[Any]], **kw: Any
) -> AsyncIterator[Worker]:
    """A Worker for KIND on dev's NATS, pulling until the block ends."""
    worker = Worker(
        dev.nats_url, ack_wait=ACK_WAIT, backoff_base=0.2, backoff_max=1, shutdown_grace=2, stream_wait=15, **kw
    )
    worker.register(KIND, handler)
    await worker.start()
    run = asyncio.create_task(worker.run(install_signal_handlers=False))
    try:
        yield worker
    finally:
        worker.shutdown()
        await asyncio.wait_for(run, timeout=30)


def test_max_running_is_checked() -> None:
    for bad in ({"Py.Bad": 1}, {KIND: -1}, {KIND: 1.5}, {KIND: True}, {KIND: 2**32}):
        with pytest.raises(ValueError):
            Worker(max_running=bad)  # type: ignore[arg-type]
    assert Worker(max_running={KIND: 0}).max_running == {KIND: 0}


def test_max_running_flag() -> None:
    args = main_args(["--max-running", "py.limited=2, py.other=0", "--max-running", "py.limited=3"])
    assert from_args(args).max_running == {"py.limited": 3, "py.other": 0}
    assert from_args(main_args([])).max_running == {}
    for bad in ("py.limited", "Py.Bad=1", "py.limited=-1", "py.limited=x", f"py.limited={2**32}"):
        with pytest.raises(SystemExit):
            main_args(["--max-running", bad])


async def test_max_running_sets_keeps_and_enforces_the_kinds_limit(dev: Dev) -> None:
    active = 0
    peak = 0

    async def handler(ctx: TaskContext) -> Any:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await ctx.sleep(HOLD)
        finally:
            active -= 1
        return {"n": ctx.input}

    async with _nats(dev) as nc:
        jsm = nc.jsm(timeout=5)

        async def max_ack_pending() -> int:
            info = await jsm.consumer_info("TASKWIRE_TASKS", kind_consumer(KIND))
            return int(info.config.max_ack_pending)

        async with _running_worker(dev, handler, max_running={KIND: 2}):
            assert await max_ack_pending() == 2
            # A second worker of the kind, without a limit of its own, keeps it.
            async with _running_worker(dev, handler):
                assert await max_ack_pending() == 2

                async with AsyncClient(dev.address, timeout=15) as tw:
                    stats = await tw.queue_stats()
                    (limited,) = [k for k in stats.kinds if k.kind == KIND]
                    assert limited.max_running == 2

                    # Both workers pull (concurrency 16 each); JetStream hands out at
                    # most 2 unacknowledged tasks of the kind at once.
                    ids = [await tw.submit(KIND, i) for i in range(TASKS)]

                    async def outcome(task_id: str) -> Any:
                        events = [e async for e in tw.watch(task_id, timeout=60)]
                        return events[-1]

                    last = await asyncio.wait_for(asyncio.gather(*(outcome(t) for t in ids)), timeout=90)
                assert [state_name(e.state) for e in last] == ["SUCCEEDED"] * TASKS
                assert [from_value(e.output) for e in last] == [{"n": i} for i in range(TASKS)]
                assert peak == 2, f"{peak} tasks ran at once under a limit of 2"

        # N = 0 lifts the limit.
        async with _running_worker(dev, handler, max_running={KIND: 0}):
            assert await max_ack_pending() == UNLIMITED_RUNNING
        async with AsyncClient(dev.address, timeout=15) as tw:
            stats = await tw.queue_stats()
            (lifted,) = [k for k in stats.kinds if k.kind == KIND]
            assert lifted.max_running == 0


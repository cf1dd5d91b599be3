"""A kind's limit on tasks running at once across all workers (docs/protocol.md §3):
``Worker(max_running={kind: N})`` sets the kind's consumer's ``max_ack_pending`` to N,
a worker without it keeps what the consumer has, N = 0 lifts the limit; and with the
limit at 2, two workers together never run more than 2 of the kind's tasks at once.
A kind's limit on starts per second by one worker (``Worker(max_rate={kind: N})``, the
Rust workers' ``--max-rate KIND=N``): a token bucket of N per second, bursts of up to N.
Against dev's NATS, with in-process Workers and tasks submitted through the client.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from conftest import Dev
from helpers import async_final_status, nats_connection, running_worker
from taskwire import AsyncClient
from taskwire.client import from_value, state_name
from taskwire.worker import UNLIMITED_RUNNING, TaskContext, Worker, _StartRate, from_args, kind_consumer, main_args

KIND = "py.limited"
RATE_KIND = "py.rate"  # only test_max_rate_paces_the_kinds_starts serves it
TASKS = 6
HOLD = 0.3  # seconds each task runs


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


def test_max_rate_is_checked() -> None:
    for bad in ({"Py.Bad": 1}, {RATE_KIND: -1}, {RATE_KIND: 1.5}, {RATE_KIND: True}, {RATE_KIND: 2**32}):
        with pytest.raises(ValueError, match="max_rate"):
            Worker(max_rate=bad)  # type: ignore[arg-type]
    assert Worker(max_rate={RATE_KIND: 0}).max_rate == {RATE_KIND: 0}
    assert Worker().max_rate == {}


def test_max_rate_flag() -> None:
    args = main_args(["--max-rate", "py.rate=2, py.other=0", "--max-rate", "py.rate=5"])
    worker = from_args(args)
    assert worker.max_rate == {"py.rate": 5, "py.other": 0}
    assert worker.max_running == {}, "--max-rate is not --max-running"
    both = from_args(main_args(["--max-rate", "py.rate=3", "--max-running", "py.rate=7"]))
    assert (both.max_rate, both.max_running) == ({"py.rate": 3}, {"py.rate": 7})
    assert from_args(main_args([])).max_rate == {}
    for bad in ("py.rate", "Py.Bad=1", "py.rate=-1", "py.rate=x", f"py.rate={2**32}"):
        with pytest.raises(SystemExit):
            main_args(["--max-rate", bad])


async def test_start_rate_is_a_token_bucket() -> None:
    """As the Rust workers' StartRate: a burst of N, then one every 1/N s, the burst
    capped at N."""
    r = _StartRate(5)
    assert await r.available() == 5
    r.spend(5)
    t0 = time.monotonic()
    assert await r.available() == 1
    waited = time.monotonic() - t0
    assert 0.18 <= waited < 1.0, waited
    r.spend(1)
    await asyncio.sleep(1.3)
    assert await r.available() == 5, "the burst is capped at the rate"


async def test_max_rate_paces_the_kinds_starts(dev: Dev) -> None:
    """With max_rate 4 per second, 12 tasks submitted at once start over at least 2 s
    (a burst of 4, then one every 250 ms), never more than 8 within one second."""
    rate, n = 4, 12

    async def handler(ctx: TaskContext) -> Any:
        return {"n": ctx.input}

    async with running_worker(dev.nats_url, RATE_KIND, handler, max_rate={RATE_KIND: rate}) as worker:
        assert worker.max_rate == {RATE_KIND: rate}
        async with AsyncClient(dev.address, timeout=15) as tw:
            ids = [await tw.submit(RATE_KIND, i) for i in range(n)]

            # The records once the recorder applied the outcomes (started_at is the time
            # of the task's first RUNNING event, the worker's claim).
            done = (async_final_status(tw, t, timeout=60, every=0.1) for t in ids)
            tasks = await asyncio.wait_for(asyncio.gather(*done), timeout=90)
    assert [state_name(t.state) for t in tasks] == ["SUCCEEDED"] * n
    assert [from_value(t.output) for t in tasks] == [{"n": i} for i in range(n)]
    assert all(t.HasField("started_at") for t in tasks)
    starts = sorted(t.started_at.ToMicroseconds() / 1e6 for t in tasks)
    span = starts[-1] - starts[0]
    assert span >= 1.8, f"{n} starts within {span:.3f}s at {rate}/s: {starts}"
    busiest = max(sum(1 for s in starts if a <= s <= a + 1.0) for a in starts)
    assert busiest <= 2 * rate, f"{busiest} starts within one second at {rate}/s: {starts}"


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

    async with nats_connection(dev.nats_url) as nc:
        jsm = nc.jsm(timeout=5)

        async def max_ack_pending() -> int:
            info = await jsm.consumer_info("TASKWIRE_TASKS", kind_consumer(KIND))
            return int(info.config.max_ack_pending)

        async with running_worker(dev.nats_url, KIND, handler, max_running={KIND: 2}):
            assert await max_ack_pending() == 2
            # A second worker of the kind, without a limit of its own, keeps it.
            async with running_worker(dev.nats_url, KIND, handler):
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
        async with running_worker(dev.nats_url, KIND, handler, max_running={KIND: 0}):
            assert await max_ack_pending() == UNLIMITED_RUNNING
        async with AsyncClient(dev.address, timeout=15) as tw:
            stats = await tw.queue_stats()
            (lifted,) = [k for k in stats.kinds if k.kind == KIND]
            assert lifted.max_running == 0


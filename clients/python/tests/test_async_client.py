"""AsyncClient (grpc.aio) against a live `taskwire dev`."""

from __future__ import annotations

import uuid

import grpc
import pytest

from conftest import Dev
from helpers import assert_strictly_increasing, async_final_status
from taskwire import AsyncClient, TaskwireError
from taskwire.client import from_value, state_name
from taskwire.v1 import task_pb2


async def test_async_submit_watch_status_list(dev: Dev) -> None:
    tag = uuid.uuid4().hex[:10]
    async with AsyncClient(dev.address, timeout=15) as client:
        task_id = await client.submit("demo.sleep", {"seconds": 0.5, "steps": 5}, labels={"async": tag})
        events = [ev async for ev in client.watch(task_id, timeout=60)]
        assert_strictly_increasing([e.seq for e in events])
        assert state_name(events[-1].state) == "SUCCEEDED"
        assert from_value(events[-1].output) == {"slept": 0.5}
        progress = [e.progress.fraction for e in events if e.state == task_pb2.TASK_STATE_RUNNING]
        assert progress == sorted(progress)

        done = await async_final_status(client, task_id)
        assert state_name(done.state) == "SUCCEEDED" and done.last_seq == events[-1].seq

        page = await client.list(labels={"async": tag})
        assert [t.id for t in page.tasks] == [task_id]
        assert [t.id async for t in client.iter_tasks(labels={"async": tag}, page_size=1)] == [task_id]

        tail = [ev async for ev in client.watch(task_id, after_seq=events[1].seq, timeout=30)]
        assert [e.seq for e in tail] == [e.seq for e in events[2:]]


async def test_async_cancel_and_errors(dev: Dev) -> None:
    async with AsyncClient(dev.address, timeout=15) as client:
        task_id = await client.submit("demo.sleep", {"seconds": 60, "steps": 60})
        watch = client.watch(task_id, timeout=60)
        async for ev in watch:
            if ev.state == task_pb2.TASK_STATE_RUNNING:
                break
        cancelled = await client.cancel(task_id)
        assert state_name(cancelled.state) == "CANCELLED"
        rest = [ev async for ev in watch]
        assert state_name(rest[-1].state) == "CANCELLED"

        with pytest.raises(TaskwireError) as e:
            await client.status(str(uuid.uuid4()))
        assert e.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(TaskwireError) as e:
            await client.submit("Not A Kind")
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(TaskwireError) as e:
            async for _ in client.watch("nope", timeout=10):
                pass
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_async_watch_can_be_closed_early(dev: Dev) -> None:
    async with AsyncClient(dev.address, timeout=15) as client:
        task_id = await client.submit("demo.sleep", {"seconds": 30, "steps": 30})
        watch = client.watch(task_id, timeout=60)
        first = await watch.__anext__()
        assert first.task_id == task_id
        await watch.aclose()
        with pytest.raises(StopAsyncIteration):
            await watch.__anext__()
        await client.cancel(task_id)


async def test_async_queue_stats(dev: Dev) -> None:
    async with AsyncClient(dev.address, timeout=15) as client:
        task_id = await client.submit("demo.echo", {"queue": "async"})
        assert state_name((await async_final_status(client, task_id)).state) == "SUCCEEDED"
        stats = await client.queue_stats(window_minutes=2)
        assert stats.window_minutes == 2
        echo = next(k for k in stats.kinds if k.kind == "demo.echo")
        assert echo.succeeded >= 1 and len(echo.finished_per_minute) == 2

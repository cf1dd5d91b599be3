"""A watch resumes by itself when `taskwire dev` (and so its watch endpoint) is
restarted mid-stream on the same data dir and address: no gap, no duplicate, and it
reaches SUCCEEDED."""

from __future__ import annotations

import asyncio
import threading
import time

from conftest import Dev
from helpers import assert_strictly_increasing, eventually
from taskwire import AsyncClient, Client
from taskwire.client import from_value, state_name
from taskwire.v1 import task_pb2

TOKENS = 120
DELAY_MS = 40  # ~5s of tokens per attempt


def _start_agent(client: Client) -> str:
    task_id = client.submit("demo.agent", {"prompt": "resume", "tokens": TOKENS, "delay_ms": DELAY_MS})
    # Watch from a snapshot with a real seq (> 0), so the full history after it can be
    # fetched again with after_seq to compare.
    eventually(lambda: client.status(task_id), lambda t: t.last_seq > 0, timeout=15)
    return task_id


def _check(client: Client, task_id: str, events: list[task_pb2.TaskEvent]) -> None:
    seqs = [e.seq for e in events]
    assert_strictly_increasing(seqs)
    assert state_name(events[-1].state) == "SUCCEEDED", [state_name(e.state) for e in events[-5:]]
    # Nothing skipped: exactly what the server has after the first event we got.
    reference = [e.seq for e in client.watch(task_id, after_seq=seqs[0], timeout=30)]
    assert seqs[1:] == reference
    out = from_value(events[-1].output)
    assert isinstance(out, dict) and len(out["text"].split()) == TOKENS


def _restart_in_background(dev: Dev) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def restart() -> None:
        try:
            dev.restart()
        except BaseException as e:  # pytest.fail raises Failed (a BaseException)
            errors.append(e)

    t = threading.Thread(target=restart, name="restart dev", daemon=True)
    t.start()
    return t, errors


def test_watch_resumes_across_a_dev_restart(own_dev: Dev) -> None:
    with Client(own_dev.address, timeout=15) as client:
        task_id = _start_agent(client)
        watch = client.watch(task_id, timeout=120)
        events: list[task_pb2.TaskEvent] = []
        restarter = None
        for ev in watch:
            events.append(ev)
            if restarter is None and len(events) == 10:
                restarter = _restart_in_background(own_dev)
                restarted_at = time.monotonic()
        assert restarter is not None
        restarter[0].join(timeout=60)
        assert not restarter[1], restarter[1]
        assert own_dev.runs == 2
        assert watch.reconnects >= 1
        _check(client, task_id, events)
        # The task really was interrupted: the restart handed it back and attempt 2 ran.
        assert any(e.state == task_pb2.TASK_STATE_RETRYING for e in events) or events[-1].attempt >= 2
        assert time.monotonic() - restarted_at < 90


def test_watch_resumes_after_the_server_is_killed(own_dev: Dev) -> None:
    """No GOAWAY this time: the connection just drops (UNAVAILABLE mid-stream). The
    killed worker's task is redelivered after dev's ack_wait (5s) to the new one."""
    with Client(own_dev.address, timeout=15) as client:
        task_id = _start_agent(client)
        watch = client.watch(task_id, timeout=120)
        events: list[task_pb2.TaskEvent] = []
        for ev in watch:
            events.append(ev)
            if len(events) == 10:
                own_dev.kill()
                own_dev.start()
        assert own_dev.runs == 2
        assert watch.reconnects >= 1
        _check(client, task_id, events)
        assert events[-1].attempt >= 2


def test_async_watch_resumes_across_a_dev_restart(own_dev: Dev) -> None:
    with Client(own_dev.address, timeout=15) as sync_client:
        task_id = _start_agent(sync_client)

        async def follow() -> tuple[list[task_pb2.TaskEvent], int]:
            events: list[task_pb2.TaskEvent] = []
            restarter = None
            async with AsyncClient(own_dev.address, timeout=15) as client:
                watch = client.watch(task_id, timeout=120)
                async for ev in watch:
                    events.append(ev)
                    if restarter is None and len(events) == 10:
                        restarter = _restart_in_background(own_dev)
                assert restarter is not None
                await asyncio.to_thread(restarter[0].join, 60)
                assert not restarter[1], restarter[1]
                return events, watch.reconnects

        events, reconnects = asyncio.run(follow())
        assert own_dev.runs == 2
        assert reconnects >= 1
        _check(sync_client, task_id, events)

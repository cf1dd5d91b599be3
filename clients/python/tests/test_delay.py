"""Delayed tasks (SubmitTaskRequest.delay / run_at) against a live `taskwire dev`: a
delayed task is SCHEDULED with Task.run_at, starts no earlier than that and succeeds;
one cancelled before its time is CANCELLED and never starts; the client refuses a
delay with a run_at, and a naive run_at, before any call."""

from __future__ import annotations

import datetime
import time
import uuid

import grpc
import pytest

from conftest import Dev, free_port
from helpers import final_status, history, states
from taskwire import AsyncClient, Client, TaskwireError
from taskwire.client import from_value, state_name
from taskwire.v1 import task_pb2

UTC = datetime.timezone.utc


def _now_us() -> int:
    return time.time_ns() // 1000


def _us(ts: object) -> int:
    return ts.ToMicroseconds()  # type: ignore[attr-defined]


def test_delayed_task_is_scheduled_then_runs_after_its_time(client: Client, run_id: str) -> None:
    tag = uuid.uuid4().hex[:10]
    before = _now_us()
    resp = client.submit_task("demo.echo", {"delayed": tag}, delay=2, labels={"run": run_id, "delay": tag})
    after = _now_us()
    assert state_name(resp.state) == "SCHEDULED", resp
    assert not resp.deduplicated

    rec = client.status(resp.task_id)
    assert state_name(rec.state) == "SCHEDULED", rec
    assert rec.HasField("run_at")
    run_at = _us(rec.run_at)
    # The server's clock is this machine's: run_at = the submit's time + 2 s.
    assert before + 2_000_000 - 50_000 <= run_at <= after + 2_000_000 + 50_000, (before, run_at, after)
    assert rec.attempt == 0 and not rec.HasField("started_at")
    listed = client.list(state="SCHEDULED", labels={"delay": tag})
    assert [t.id for t in listed.tasks] == [resp.task_id]

    # A watch from now: the SCHEDULED snapshot first (unless the 2 s are already up),
    # then the run to SUCCEEDED.
    early = _now_us() < run_at - 300_000
    events = list(client.watch(resp.task_id, timeout=30))
    if early:
        assert states(events)[0] == "SCHEDULED" and events[0].seq == 0, states(events)
    assert states(events)[-1] == "SUCCEEDED", states(events)

    done = final_status(client, resp.task_id, timeout=15)
    assert state_name(done.state) == "SUCCEEDED", done
    assert from_value(done.output) == {"delayed": tag}
    assert done.HasField("run_at") and _us(done.run_at) == run_at
    assert done.HasField("started_at")
    assert _us(done.started_at) >= run_at, (done.started_at, done.run_at)
    assert done.attempt == 1


def test_delayed_task_cancelled_before_its_time_never_runs(client: Client, run_id: str) -> None:
    tag = uuid.uuid4().hex[:10]
    before = _now_us()
    resp = client.submit_task(
        "demo.echo", {"never": True}, delay=datetime.timedelta(seconds=60), labels={"run": run_id, "delay": tag}
    )
    assert state_name(resp.state) == "SCHEDULED", resp
    rec = client.status(resp.task_id)
    assert state_name(rec.state) == "SCHEDULED"
    assert before + 60_000_000 - 50_000 <= _us(rec.run_at) <= _now_us() + 60_000_000 + 50_000
    assert [t.id for t in client.list(state=task_pb2.TASK_STATE_SCHEDULED, labels={"delay": tag}).tasks] == [
        resp.task_id
    ]

    cancelled = client.cancel(resp.task_id)
    assert state_name(cancelled.state) == "CANCELLED", cancelled
    done = final_status(client, resp.task_id, timeout=15)
    assert state_name(done.state) == "CANCELLED", done
    assert not done.HasField("started_at"), done
    assert done.attempt == 0
    assert not done.HasField("output")
    # Its whole history is the api's CANCELLED event: no worker ever claimed it.
    assert states(history(client, resp.task_id)) == ["CANCELLED"]
    # A little later it is still CANCELLED and was never started.
    time.sleep(1.5)
    again = client.status(resp.task_id)
    assert state_name(again.state) == "CANCELLED" and not again.HasField("started_at")
    assert client.list(state="SCHEDULED", labels={"delay": tag}).tasks == []


def test_run_at_an_aware_datetime(client: Client, run_id: str) -> None:
    # Any time zone: sent as the same instant in UTC.
    plus2 = datetime.timezone(datetime.timedelta(hours=2))
    when = (datetime.datetime.now(UTC) + datetime.timedelta(seconds=2)).astimezone(plus2)
    resp = client.submit_task("demo.echo", "at", run_at=when, labels={"run": run_id})
    assert state_name(resp.state) == "SCHEDULED", resp
    rec = client.status(resp.task_id)
    assert state_name(rec.state) == "SCHEDULED"
    want_us = int(when.timestamp()) * 1_000_000 + when.microsecond
    assert _us(rec.run_at) == want_us, (rec.run_at, when)
    done = client.wait(resp.task_id, timeout=30)
    done = final_status(client, resp.task_id, timeout=15)
    assert state_name(done.state) == "SUCCEEDED", done
    assert _us(done.started_at) >= want_us

    # A run_at already past runs at once: QUEUED, no run_at (enqueued at once).
    past = datetime.datetime.now(UTC) - datetime.timedelta(minutes=5)
    resp = client.submit_task("demo.echo", "past", run_at=past, labels={"run": run_id})
    assert state_name(resp.state) == "QUEUED", resp
    done = client.wait(resp.task_id, timeout=30)
    done = final_status(client, resp.task_id, timeout=15)
    assert state_name(done.state) == "SUCCEEDED", done
    assert not done.HasField("run_at"), done


def test_out_of_range_schedules_are_the_servers_invalid_argument(client: Client) -> None:
    for kwargs in (
        {"delay": 0},
        {"delay": -1},
        {"delay": datetime.timedelta(days=367)},
        {"run_at": datetime.datetime.now(UTC) + datetime.timedelta(days=367)},
    ):
        with pytest.raises(TaskwireError) as e:
            client.submit("demo.echo", "x", **kwargs)  # type: ignore[arg-type]
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT, kwargs


def test_the_client_refuses_both_and_naive_before_any_call(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    aware = datetime.datetime.now(UTC) + datetime.timedelta(seconds=30)
    naive = datetime.datetime.now() + datetime.timedelta(seconds=30)
    # On the live server: nothing submitted.
    with pytest.raises(ValueError, match="not both"):
        client.submit("demo.echo", "x", delay=5, run_at=aware)
    with pytest.raises(ValueError, match="not both"):
        client.submit_task("demo.echo", "x", delay=datetime.timedelta(seconds=5), run_at=aware)
    with pytest.raises(ValueError, match="timezone-aware"):
        client.submit("demo.echo", "x", run_at=naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        client.submit_task("demo.echo", "x", run_at=datetime.datetime.now(UTC).replace(tzinfo=None))  # naive, even if UTC
    with pytest.raises(TypeError):
        client.submit("demo.echo", "x", run_at=aware.date())  # type: ignore[arg-type]
    # No SubmitTask call was made for any of them.
    calls: list[object] = []
    monkeypatch.setattr(client._tasks, "SubmitTask", lambda req, **kw: calls.append(req))
    with pytest.raises(ValueError):
        client.submit("demo.echo", "x", delay=5, run_at=aware)
    with pytest.raises(ValueError):
        client.submit_task("demo.echo", "x", run_at=naive)
    assert calls == []


async def test_async_delay_run_at_and_refusals(dev: Dev) -> None:
    tag = uuid.uuid4().hex[:10]
    async with AsyncClient(dev.address, timeout=15) as client:
        before = _now_us()
        resp = await client.submit_task("demo.echo", "a", delay=60.5, labels={"delay": tag})
        assert state_name(resp.state) == "SCHEDULED", resp
        rec = await client.status(resp.task_id)
        assert state_name(rec.state) == "SCHEDULED"
        assert before + 60_500_000 - 50_000 <= _us(rec.run_at) <= _now_us() + 60_500_000 + 50_000
        task_id = await client.submit(
            "demo.echo", "b", run_at=datetime.datetime.now(UTC) + datetime.timedelta(minutes=10), labels={"delay": tag}
        )
        assert state_name((await client.status(task_id)).state) == "SCHEDULED"
        for t in (resp.task_id, task_id):
            c = await client.cancel(t)
            assert state_name(c.state) == "CANCELLED" and not c.HasField("started_at")

        with pytest.raises(ValueError, match="not both"):
            await client.submit("demo.echo", "x", delay=1, run_at=datetime.datetime.now(UTC))
        with pytest.raises(ValueError, match="timezone-aware"):
            await client.submit_task("demo.echo", "x", run_at=datetime.datetime.now())
    # Against no server at all: a ValueError, not UNAVAILABLE, so no call was made.
    async with AsyncClient(f"127.0.0.1:{free_port()}", timeout=2) as nowhere:
        with pytest.raises(ValueError):
            await nowhere.submit("demo.echo", "x", run_at=datetime.datetime.now())
        with pytest.raises(ValueError):
            await nowhere.submit_task("demo.echo", "x", delay=1, run_at=datetime.datetime.now(UTC))

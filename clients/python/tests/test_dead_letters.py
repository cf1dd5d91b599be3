"""Dead letters against a live `taskwire dev`: `demo.fail` tasks (always fail, not
retryably, with code DEMO_FAILURE) end FAILED; `retry` starts run 2 under the same id,
which fails again, and `attempts` lists both runs with the worker that ran them;
`retry_all` / `discard_all` (a dry run, then exactly the tasks it counted) by kind and
a label unique to the test; `watch_tasks(state="FAILED")` hears one event per task
dead-lettered; retrying a task that is not FAILED is FAILED_PRECONDITION. Sync and
async clients."""

from __future__ import annotations

import datetime
import time
import uuid

import grpc
import pytest

from conftest import Dev
from helpers import async_eventually, async_final_status, collect_in_thread, eventually, final_status
from taskwire import AsyncClient, Client, TaskwireError
from taskwire.client import BulkResult, is_terminal, state_name
from taskwire.v1 import task_pb2

FAILED = task_pb2.TASK_STATE_FAILED
WAIT = 30.0


def _tag() -> str:
    """A label value unique to one test: no other test's task carries it."""
    return "dl-" + uuid.uuid4().hex[:12]


def _dead(client: Client, task_id: str, run: int = 1) -> task_pb2.Task:
    """The task's record once run ``run`` ended FAILED (bounded wait)."""
    t = eventually(
        lambda: client.status(task_id),
        lambda t: t.run == run and t.state == FAILED,
        timeout=WAIT,
    )
    assert t.run == run and state_name(t.state) == "FAILED", t
    return t


def test_retry_runs_a_dead_letter_again_and_attempts_show_both_runs(client: Client) -> None:
    tag = _tag()
    task_id = client.submit("demo.fail", {"n": 1}, labels={"batch": tag})
    first = _dead(client, task_id)
    assert first.attempt == 1
    assert first.error.code == "DEMO_FAILURE" and not first.error.retryable, first

    retried = client.retry(task_id)
    assert retried.id == task_id
    assert retried.run == 2, retried
    # The task as it is now: run 2, QUEUED, or already taken (or even failed again) by
    # a worker, demo.fail being quick.
    assert state_name(retried.state) in ("QUEUED", "RUNNING", "FAILED"), retried

    second = _dead(client, task_id, run=2)
    assert second.attempt == 1, "attempts count from 1 in every run"
    assert second.error.code == "DEMO_FAILURE"
    assert second.kind == "demo.fail" and dict(second.labels) == {"batch": tag}

    attempts = client.attempts(task_id)
    assert [(a.run, a.attempt, state_name(a.outcome)) for a in attempts] == [
        (1, 1, "FAILED"),
        (2, 1, "FAILED"),
    ], attempts
    for a in attempts:
        assert a.worker.startswith("taskwire-worker@"), a
        assert a.error.code == "DEMO_FAILURE", a
        assert a.HasField("started_at") and a.HasField("ended_at"), a
        assert a.started_at.ToMicroseconds() <= a.ended_at.ToMicroseconds(), a
    assert attempts[0].ended_at.ToMicroseconds() <= attempts[1].started_at.ToMicroseconds()


def test_retry_of_a_task_that_is_not_failed_is_a_failed_precondition(client: Client) -> None:
    tag = _tag()
    # SUCCEEDED.
    done = client.submit("demo.echo", "fine", labels={"batch": tag})
    assert state_name(final_status(client, done, timeout=WAIT).state) == "SUCCEEDED"
    with pytest.raises(TaskwireError) as e:
        client.retry(done)
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION, e.value
    assert e.value.method == "TaskService/RetryTask"
    assert client.status(done).run == 1

    # SCHEDULED (an hour ahead: it cannot have changed by the time of the retry).
    later = client.submit("demo.echo", "later", delay=3600, labels={"batch": tag})
    try:
        with pytest.raises(TaskwireError) as e:
            client.retry(later)
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION, e.value
    finally:
        client.cancel(later)

    # No such task; not a task id.
    with pytest.raises(TaskwireError) as e:
        client.retry(str(uuid.uuid4()))
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(TaskwireError) as e:
        client.attempts(str(uuid.uuid4()))
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(TaskwireError) as e:
        client.retry("not-a-uuid")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_retry_all_and_discard_all_apply_to_exactly_the_filtered_tasks(client: Client) -> None:
    tag = _tag()
    labels = {"batch": tag}
    ids = [client.submit("demo.fail", {"i": i}, labels=labels) for i in range(5)]
    # Not matched: another label value; the right label but a task that succeeds.
    other = client.submit("demo.fail", {"other": True}, labels={"batch": tag + "-other"})
    fine = client.submit("demo.echo", {"fine": True}, labels=labels)
    for t in ids + [other]:
        _dead(client, t)
    assert state_name(final_status(client, fine, timeout=WAIT).state) == "SUCCEEDED"

    # The dry run counts exactly the test's dead letters and changes nothing.
    dry = client.retry_all(kind="demo.fail", labels=labels, dry_run=True)
    assert isinstance(dry, BulkResult)
    assert dry.dry_run and dry.count == 5 and dry.matched == 5 and dry.remaining == 5, dry
    assert dry.task_ids == () and dry.calls == 0
    assert dry.finished_before.tzinfo is not None
    assert abs((datetime.datetime.now(datetime.timezone.utc) - dry.finished_before).total_seconds()) < 60
    assert all(client.status(t).run == 1 for t in ids)
    # The other filters: the error code, and a kind with no dead letters of the batch.
    assert client.retry_all(labels=labels, error_code="DEMO_FAILURE", dry_run=True).count == 5
    assert client.retry_all(labels=labels, error_code="NOT_THIS_ONE", dry_run=True).count == 0
    assert client.retry_all(kind="demo.echo", labels=labels, dry_run=True).count == 0

    # The real thing, at most 2 per call: 3 calls, exactly those tasks, each once.
    done = client.retry_all(kind="demo.fail", labels=labels, error_code="DEMO_FAILURE", limit=2)
    assert not done.dry_run
    assert sorted(done.task_ids) == sorted(ids), done
    assert done.count == 5 and done.matched == 5 and done.remaining == 0, done
    assert done.calls == 3, done
    assert client.status(other).run == 1, "another label's dead letter is left alone"
    assert client.status(fine).run == 1
    # They run again and fail again (demo.fail always does), in run 2.
    for t in ids:
        rec = _dead(client, t, run=2)
        assert rec.attempt == 1
    # Their run-2 failures came after the first dry run: nothing of that count is
    # left, but a new dry run counts them again.
    assert client.retry_all(kind="demo.fail", labels=labels, dry_run=True).count == 5

    # Discard: dry run, then exactly those; they are gone.
    dry = client.discard_all(kind="demo.fail", labels=labels, dry_run=True)
    assert dry.dry_run and dry.count == 5 and dry.task_ids == (), dry
    assert all(client.status(t).state == FAILED for t in ids), "a dry run deletes nothing"
    gone = client.discard_all(kind="demo.fail", labels=labels)
    assert sorted(gone.task_ids) == sorted(ids), gone
    assert gone.count == 5 and gone.remaining == 0 and gone.calls == 1, gone
    for t in ids:
        with pytest.raises(TaskwireError) as e:
            client.status(t)
        assert e.value.code == grpc.StatusCode.NOT_FOUND, e.value
    assert client.discard_all(kind="demo.fail", labels=labels, dry_run=True).count == 0
    assert client.discard_all(kind="demo.fail", labels=labels).count == 0
    assert state_name(client.status(fine).state) == "SUCCEEDED", "only FAILED tasks are discarded"

    # The raw one-call forms, on the other batch: a real call needs the dry run's
    # moment (INVALID_ARGUMENT without it; a naive datetime is refused before any call).
    other_labels = {"batch": tag + "-other"}
    raw_dry = client.discard_tasks(kind="demo.fail", labels=other_labels, dry_run=True)
    assert raw_dry.matched == 1 and raw_dry.remaining == 1 and list(raw_dry.task_ids) == []
    with pytest.raises(TaskwireError) as e:
        client.discard_tasks(kind="demo.fail", labels=other_labels)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert e.value.method == "TaskService/DiscardTasks"
    with pytest.raises(ValueError):
        client.retry_tasks(labels=other_labels, finished_before=datetime.datetime.now())
    with pytest.raises(TaskwireError) as e:
        client.retry_tasks(labels=other_labels, dry_run=True, limit=1001)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    raw = client.discard_tasks(kind="demo.fail", labels=other_labels, finished_before=raw_dry.finished_before)
    assert raw.matched == 1 and raw.remaining == 0 and list(raw.task_ids) == [other], raw
    with pytest.raises(TaskwireError) as e:
        client.status(other)
    assert e.value.code == grpc.StatusCode.NOT_FOUND


def test_watch_tasks_state_failed_hears_each_dead_letter_once(client: Client, dev: Dev) -> None:
    tag = _tag()
    labels = {"batch": tag}
    got: list[task_pb2.TaskEvent] = []
    errors: list[TaskwireError] = []
    feed_client = Client(dev.address)
    try:
        feed = feed_client.watch_tasks(kind="demo.fail", labels=labels, state="FAILED", timeout=120)
        thread = collect_in_thread(feed, got, errors=errors)

        def heard(task_id: str) -> int:
            return sum(1 for e in list(got) if e.task_id == task_id)

        # The feed is live only: probe until it hears one (each probe is a dead letter
        # too, but it may fail before the stream is set up and be missed).
        probes: list[str] = []
        deadline = time.monotonic() + WAIT
        while not any(heard(p) for p in probes):
            assert time.monotonic() < deadline, f"the feed heard no probe: {errors}"
            probes.append(client.submit("demo.fail", {"probe": len(probes)}, labels=labels))
            eventually(lambda: any(heard(p) for p in probes), bool, timeout=1.5)

        a = client.submit("demo.fail", {"x": "a"}, labels=labels)
        b = client.submit("demo.fail", {"x": "b"}, labels=labels)
        _dead(client, a)
        _dead(client, b)
        client.retry(a)  # a second run: a second dead-lettering of a
        _dead(client, a, run=2)
        # Anything the feed sends about a and b comes before the last one's FAILED.
        last = client.submit("demo.fail", {"x": "last"}, labels=labels)
        eventually(
            lambda: (heard(a), heard(b), heard(last)), lambda n: n == (2, 1, 1), timeout=WAIT
        )
    finally:
        feed_client.close()
    thread.join(timeout=WAIT)
    assert not thread.is_alive()

    events = list(got)
    assert [heard(t) for t in (a, b, last)] == [2, 1, 1], events
    assert {e.task_id for e in events} <= {a, b, last, *probes}
    assert all(sum(1 for e in events if e.task_id == p) <= 1 for p in probes)
    # Only FAILED events: not the RUNNING ones of the same tasks.
    assert all(e.state == FAILED for e in events), events
    assert all(e.error.code == "DEMO_FAILURE" for e in events), events


async def test_async_retry_attempts_and_bulk(dev: Dev) -> None:
    tag = _tag()
    labels = {"batch": tag}
    async with AsyncClient(dev.address, timeout=15) as client:

        async def dead(task_id: str, run: int = 1) -> task_pb2.Task:
            async def status() -> task_pb2.Task:
                return await client.status(task_id)

            t = await async_eventually(status, lambda t: t.run == run and t.state == FAILED, WAIT, every=0.05)
            assert t.run == run and state_name(t.state) == "FAILED", t
            return t

        ids = [await client.submit("demo.fail", {"i": i}, labels=labels) for i in range(2)]
        for t in ids:
            await dead(t)

        with pytest.raises(TaskwireError) as e:
            await client.retry(str(uuid.uuid4()))
        assert e.value.code == grpc.StatusCode.NOT_FOUND
        retried = await client.retry(ids[0])
        assert retried.run == 2
        second = await dead(ids[0], run=2)
        assert second.attempt == 1 and second.error.code == "DEMO_FAILURE"
        attempts = await client.attempts(ids[0])
        assert [(a.run, a.attempt, a.outcome) for a in attempts] == [(1, 1, FAILED), (2, 1, FAILED)]
        assert all(a.worker.startswith("taskwire-worker@") for a in attempts), attempts

        dry = await client.retry_all(kind="demo.fail", labels=labels, dry_run=True)
        assert dry.count == 2 and dry.task_ids == ()
        raw = await client.retry_tasks(kind="demo.fail", labels=labels, dry_run=True)
        assert raw.matched == 2
        done = await client.retry_all(kind="demo.fail", labels=labels, limit=1)
        assert sorted(done.task_ids) == sorted(ids) and done.calls == 2 and done.remaining == 0, done
        for t in ids:
            await dead(t, run=3 if t == ids[0] else 2)

        with pytest.raises(TaskwireError) as e:
            await client.discard_tasks(kind="demo.fail", labels=labels)
        assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
        gone = await client.discard_all(kind="demo.fail", labels=labels)
        assert sorted(gone.task_ids) == sorted(ids) and gone.count == 2 and gone.remaining == 0, gone
        for t in ids:
            with pytest.raises(TaskwireError) as e:
                await client.status(t)
            assert e.value.code == grpc.StatusCode.NOT_FOUND

        # A task that is not FAILED: FAILED_PRECONDITION.
        echo = await client.submit("demo.echo", "x", labels=labels)
        assert is_terminal((await async_final_status(client, echo, timeout=WAIT)).state)
        with pytest.raises(TaskwireError) as e:
            await client.retry(echo)
        assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert e.value.method == "TaskService/RetryTask"

"""The blocking client against a live `taskwire dev`: submit, status, list, cancel,
watch, errors."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest

from conftest import Dev, free_port
from helpers import assert_strictly_increasing, collect_in_thread, eventually, final_status, states
from taskwire import Client, TaskwireError
from taskwire.client import from_value, is_terminal, state_name
from taskwire.v1 import task_pb2


def test_submit_status_and_output_round_trip(client: Client, run_id: str) -> None:
    payload = {"text": "héllo", "n": 3, "x": 2.5, "ok": True, "none": None, "list": [1, [2, {"deep": "yes"}]]}
    task_id = client.submit("demo.echo", payload, labels={"run": run_id, "test": "echo"}, max_attempts=2)
    uuid.UUID(task_id)
    first = client.status(task_id)
    assert first.id == task_id and first.kind == "demo.echo"
    assert first.max_attempts == 2
    assert dict(first.labels) == {"run": run_id, "test": "echo"}
    assert from_value(first.input) == payload

    done = client.wait(task_id, timeout=30)
    done = final_status(client, task_id)
    assert state_name(done.state) == "SUCCEEDED", done
    assert from_value(done.output) == payload
    assert done.attempt == 1 and done.last_seq > 0
    assert done.progress.fraction == 1.0


def test_idempotency_key_deduplicates(client: Client, run_id: str) -> None:
    key = f"idem-{run_id}-{uuid.uuid4().hex[:8]}"
    a = client.submit_task("demo.echo", {"i": 1}, idempotency_key=key, labels={"run": run_id})
    b = client.submit_task("demo.echo", {"i": 2}, idempotency_key=key, labels={"run": run_id})
    assert not a.deduplicated and b.deduplicated
    assert a.task_id == b.task_id


def test_list_filters_and_pages(client: Client) -> None:
    tag = uuid.uuid4().hex[:10]
    ids = [client.submit("demo.echo", {"i": i}, labels={"list": tag}) for i in range(3)]
    other = client.submit("demo.sleep", {"seconds": 0}, labels={"list": tag})
    for t in ids + [other]:
        client.wait(t, timeout=30)

    page = client.list(labels={"list": tag})
    assert {t.id for t in page.tasks} == set(ids) | {other}
    assert page.next_page_token == ""
    # Newest first.
    assert [t.id for t in page.tasks] == [other] + ids[::-1]

    only_echo = client.list(labels={"list": tag}, kind="demo.echo")
    assert {t.id for t in only_echo.tasks} == set(ids)

    succeeded = eventually(
        lambda: client.list(labels={"list": tag}, state="SUCCEEDED"), lambda p: len(p.tasks) == 4
    )
    assert len(succeeded.tasks) == 4
    assert client.list(labels={"list": tag}, state=task_pb2.TASK_STATE_FAILED).tasks == []

    # Page by page.
    seen: list[str] = []
    token = ""
    for _ in range(10):
        p = client.list(labels={"list": tag}, page_size=1, page_token=token)
        assert len(p.tasks) <= 1
        seen += [t.id for t in p.tasks]
        token = p.next_page_token
        if not token:
            break
    assert seen == [other] + ids[::-1]
    assert [t.id for t in client.iter_tasks(labels={"list": tag}, page_size=2)] == seen


def test_cancel_a_running_task(client: Client, run_id: str) -> None:
    task_id = client.submit("demo.sleep", {"seconds": 60, "steps": 60}, labels={"run": run_id})
    watch = client.watch(task_id, timeout=60)
    seen: list[task_pb2.TaskEvent] = []
    for ev in watch:
        seen.append(ev)
        if ev.state == task_pb2.TASK_STATE_RUNNING:
            break
    cancelled = client.cancel(task_id)
    assert state_name(cancelled.state) == "CANCELLED"
    rest = list(watch)
    assert states(rest)[-1] == "CANCELLED"
    assert rest[-1].message == "cancelled by request"
    assert_strictly_increasing([e.seq for e in seen + rest])
    # Cancelling again is OK and changes nothing.
    again = client.cancel(task_id)
    assert state_name(again.state) == "CANCELLED" and again.last_seq == rest[-1].seq
    assert state_name(final_status(client, task_id).state) == "CANCELLED"


def test_cancel_a_finished_task_is_a_failed_precondition(client: Client) -> None:
    task_id = client.submit("demo.echo", "x")
    client.wait(task_id, timeout=30)
    final_status(client, task_id)
    with pytest.raises(TaskwireError) as e:
        client.cancel(task_id)
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert e.value.method == "TaskService/CancelTask"


def test_errors_carry_the_grpc_code(client: Client) -> None:
    with pytest.raises(TaskwireError) as e:
        client.status(str(uuid.uuid4()))
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    assert "NOT_FOUND" in str(e.value)
    with pytest.raises(TaskwireError) as e:
        client.status("not-a-uuid")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(TaskwireError) as e:
        client.submit("Bad Kind!")
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(TaskwireError) as e:
        client.submit("demo.echo", max_attempts=101)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(TaskwireError) as e:
        list(client.watch(str(uuid.uuid4()), timeout=10))
    assert e.value.code == grpc.StatusCode.NOT_FOUND
    with pytest.raises(TaskwireError) as e:
        client.list(page_size=5000)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_unreachable_server_is_unavailable() -> None:
    with Client(f"127.0.0.1:{free_port()}", timeout=2, watch_retries=2, watch_backoff_base=0.05) as c:
        with pytest.raises(TaskwireError) as e:
            c.status(str(uuid.uuid4()))
        assert e.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        w = c.watch(str(uuid.uuid4()), timeout=10)
        with pytest.raises(TaskwireError) as e:
            list(w)
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
        assert w.reconnects == 2


def test_watch_streams_progress_in_order_to_succeeded(client: Client) -> None:
    steps = 8
    task_id = client.submit("demo.sleep", {"seconds": 0.8, "steps": steps})
    events = list(client.watch(task_id, timeout=60))
    seqs = [e.seq for e in events]
    assert_strictly_increasing(seqs)
    assert states(events)[-1] == "SUCCEEDED"
    assert from_value(events[-1].output) == {"slept": 0.8}
    running = [e for e in events if e.state == task_pb2.TASK_STATE_RUNNING and e.progress.message]
    fractions = [e.progress.fraction for e in running]
    assert fractions == sorted(fractions)
    # Every step is there unless the snapshot (first event) already covered it.
    messages = [e.progress.message for e in running]
    assert messages[-1] == f"step {steps}/{steps}"
    n = len(messages)
    assert messages == [f"step {i}/{steps}" for i in range(steps - n + 1, steps + 1)]
    assert sum(1 for e in events if is_terminal(e.state)) == 1

    # after_seq: every event after it, nothing twice, nothing skipped.
    mid = seqs[len(seqs) // 2]
    tail = list(client.watch(task_id, after_seq=mid, timeout=30))
    assert [e.seq for e in tail] == [s for s in seqs if s > mid]
    # A finished task (once the record has it): the snapshot alone, then the end.
    final_status(client, task_id)
    snap = list(client.watch(task_id, timeout=30))
    assert len(snap) == 1 and states(snap) == ["SUCCEEDED"] and snap[0].seq == seqs[-1]


def test_watch_tasks_live_feed(client: Client, dev: Dev) -> None:
    tag = uuid.uuid4().hex[:10]
    got: list[task_pb2.TaskEvent] = []

    with Client(dev.address) as feed_client:
        feed = feed_client.watch_tasks(kind="demo.sleep", labels={"feed": tag}, timeout=30)
        # An error ending the feed is ignored here: the assertions below fail without it.
        t = collect_in_thread(feed, got, until=lambda ev: is_terminal(ev.state), errors=[])
        # The feed is live only: give the stream a moment to be established.
        time.sleep(1.0)
        task_id = client.submit("demo.sleep", {"seconds": 1.5, "steps": 3}, labels={"feed": tag})
        client.submit("demo.echo", {}, labels={"feed": tag})  # another kind: filtered out
        t.join(timeout=30)
    assert got and all(e.task_id == task_id for e in got)
    assert states(got)[-1] == "SUCCEEDED"
    assert_strictly_increasing([e.seq for e in got])


def test_queue_stats_counts_a_kind_that_ran(client: Client) -> None:
    before = {k.kind: k for k in client.queue_stats().kinds}
    done_before = before["demo.echo"].succeeded if "demo.echo" in before else 0
    task_id = client.submit("demo.echo", {"queue": "stats"})
    assert state_name(final_status(client, task_id).state) == "SUCCEEDED"

    # The finished counts come from the database: the record has the task now.
    stats = eventually(
        client.queue_stats,
        lambda s: any(k.kind == "demo.echo" and k.succeeded > done_before for k in s.kinds),
    )
    assert stats.window_minutes == 15  # 0 = the server's default
    assert stats.time.seconds > 0
    assert [k.kind for k in stats.kinds] == sorted(k.kind for k in stats.kinds)
    echo = next(k for k in stats.kinds if k.kind == "demo.echo")
    assert echo.succeeded >= done_before + 1 and echo.failed == 0
    assert len(echo.finished_per_minute) == 15
    assert sum(echo.finished_per_minute) == echo.succeeded + echo.failed
    assert sum(echo.finished_per_minute[-2:]) >= 1  # this minute's, or the last one's if it just turned
    assert echo.waiting == 0 and not echo.HasField("oldest_waiting")
    # Every demo kind `taskwire dev` serves is listed, run or not.
    assert {"demo.echo", "demo.sleep", "demo.fail"} <= {k.kind for k in stats.kinds}

    five = client.queue_stats(window_minutes=5)
    assert five.window_minutes == 5
    assert all(len(k.finished_per_minute) == 5 for k in five.kinds)
    with pytest.raises(TaskwireError) as e:
        client.queue_stats(window_minutes=61)
    assert e.value.code == grpc.StatusCode.INVALID_ARGUMENT

"""The Python worker (examples/reverse_worker.py on taskwire.worker) end to end, next
to dev's Rust worker: tasks submitted with grpcurl, followed with the client."""

from __future__ import annotations

import asyncio
import datetime
import json
import subprocess
import time
from typing import Any

import pytest

from conftest import GRPCURL, WORKER_ACK_WAIT, Dev, PyWorker
from helpers import (
    assert_strictly_increasing,
    collect_in_thread,
    eventually,
    final_status,
    history,
    nats_connection,
    states,
)
from taskwire import Client
from taskwire.client import from_value, state_name
from taskwire.internal.v1 import messages_pb2
from taskwire.v1 import task_pb2
from taskwire.worker import kind_consumer


def grpcurl_submit(dev: Dev, request: dict[str, Any]) -> str:
    """SubmitTask with grpcurl (server reflection), as a non-Python client would."""
    out = subprocess.run(
        [str(GRPCURL), "-plaintext", "-max-time", "15", "-d", json.dumps(request),
         dev.address, "taskwire.v1.TaskService/SubmitTask"],
        capture_output=True, text=True, timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)["taskId"]


async def _nats(dev: Dev, fn: Any) -> Any:
    async with nats_connection(dev.nats_url) as nc:
        return await fn(nc.jsm(timeout=5))


def consumer_info(dev: Dev, kind: str) -> Any:
    return asyncio.run(_nats(dev, lambda jsm: jsm.consumer_info("TASKWIRE_TASKS", kind_consumer(kind))))


def dlq_copy(dev: Dev, kind: str) -> Any:
    return asyncio.run(_nats(dev, lambda jsm: jsm.get_last_msg("TASKWIRE_DLQ", f"taskwire.dlq.{kind}")))


def wait_until_acked(dev: Dev, kind: str, timeout: float = 15.0) -> Any:
    """The kind's work queue is empty and nothing is awaiting an ack."""
    return eventually(
        lambda: consumer_info(dev, kind), lambda i: i.num_pending == 0 and i.num_ack_pending == 0, timeout, every=0.1
    )


def test_consumer_is_the_documented_durable(dev: Dev, py_worker: PyWorker) -> None:
    info = consumer_info(dev, "py.reverse")
    assert info.name == "taskwire-kind-py_reverse-" + kind_consumer("py.reverse").rsplit("-", 1)[1]
    assert info.config.filter_subject == "taskwire.tasks.py.reverse"
    assert info.config.ack_wait == WORKER_ACK_WAIT
    assert info.config.max_deliver == 101
    assert info.config.max_ack_pending == 10_000


def test_py_reverse_end_to_end(dev: Dev, client: Client, py_worker: PyWorker) -> None:
    text = "the quick brown fox jumps over the lazy dog"
    words = text.split()
    task_id = grpcurl_submit(dev, {"kind": "py.reverse", "input": {"text": text, "delay_ms": 30}})
    events = list(client.watch(task_id, timeout=60))
    assert_strictly_increasing([e.seq for e in events])
    assert states(events)[-1] == "SUCCEEDED", (states(events), py_worker.tail())
    expected = " ".join(reversed(words))
    assert from_value(events[-1].output) == {"reversed": expected}
    assert events[-1].attempt == 1

    # One progress event per word, in order (those before the first event we got were
    # folded into the snapshot).
    progress = [e for e in events if e.state == task_pb2.TASK_STATE_RUNNING and e.progress.message]
    n = len(words)
    assert progress, states(events)
    k = n - len(progress)
    assert [e.progress.message for e in progress] == list(reversed(words))[k:]
    assert [round(e.progress.fraction, 6) for e in progress] == [round(i / n, 6) for i in range(k + 1, n + 1)]
    # The complete history: RUNNING, one event per word, SUCCEEDED.
    full = history(client, task_id)
    assert states(full) == ["RUNNING"] * (n + 1) + ["SUCCEEDED"]
    assert [e.progress.message for e in full[1:-1]] == list(reversed(words))
    assert [e.seq for e in full][-len(events) + 1 :] == [e.seq for e in events[1:]]

    done = final_status(client, task_id)
    assert state_name(done.state) == "SUCCEEDED"
    assert from_value(done.output) == {"reversed": expected}
    assert done.progress.fraction == 1.0 and done.progress.message == "done"
    assert wait_until_acked(dev, "py.reverse").num_ack_pending == 0


def test_failing_python_task_is_not_retried_past_max_attempts(
    dev: Dev, client: Client, py_worker: PyWorker
) -> None:
    task_id = grpcurl_submit(dev, {"kind": "py.fail", "input": {}, "max_attempts": 3})
    events = list(client.watch(task_id, timeout=60))
    assert states(events)[-1] == "FAILED", (states(events), py_worker.tail())
    # Attempts 1 and 2 fail retryably (RETRYING), attempt 3 is the last (FAILED).
    full = history(client, task_id)
    assert [(state_name(e.state), e.attempt) for e in full] == [
        ("RUNNING", 1), ("RETRYING", 1), ("RUNNING", 2), ("RETRYING", 2), ("RUNNING", 3), ("FAILED", 3),
    ]
    assert full[-1].seq == events[-1].seq
    last = events[-1]
    assert last.attempt == 3
    assert last.error.code == "PY_FAILURE" and last.error.retryable
    assert "attempt 3 of 3" in last.error.message

    # Nothing after FAILED: no fourth attempt, the message left the work queue.
    info = wait_until_acked(dev, "py.fail")
    assert info.num_pending == 0 and info.num_ack_pending == 0, info
    time.sleep(1.5)  # past the worker's largest backoff (1s)
    after = list(client.watch(task_id, after_seq=last.seq, timeout=10))
    assert after == []
    done = final_status(client, task_id)
    assert state_name(done.state) == "FAILED" and done.attempt == 3
    assert done.error.code == "PY_FAILURE"

    # The dead letter: the original TaskMessage with the documented headers.
    dlq = dlq_copy(dev, "py.fail")
    body = messages_pb2.TaskMessage.FromString(dlq.data)
    assert body.task_id == task_id and body.kind == "py.fail" and body.max_attempts == 3
    assert dlq.headers["Nats-Msg-Id"] == task_id
    assert dlq.headers["Taskwire-Error-Code"] == "PY_FAILURE"
    assert dlq.headers["Taskwire-Error-Retryable"] == "true"
    assert dlq.headers["Taskwire-Schema"] == "1"


def test_fatal_python_failure_fails_at_once(dev: Dev, client: Client, py_worker: PyWorker) -> None:
    task_id = grpcurl_submit(dev, {"kind": "py.reverse", "input": {"no_text": 1}, "max_attempts": 5})
    events = list(client.watch(task_id, timeout=60))
    assert states(events)[-1] == "FAILED"
    assert not any(e.state == task_pb2.TASK_STATE_RETRYING for e in events)
    assert events[-1].attempt == 1
    assert events[-1].error.code == "BAD_INPUT" and not events[-1].error.retryable
    dlq = dlq_copy(dev, "py.reverse")
    assert dlq.headers["Nats-Msg-Id"] == task_id
    assert dlq.headers["Taskwire-Error-Retryable"] == "false"


def test_cancel_stops_a_running_python_task(dev: Dev, client: Client, py_worker: PyWorker) -> None:
    text = " ".join(f"w{i}" for i in range(40))
    task_id = client.submit("py.reverse", {"text": text, "delay_ms": 200})
    watch = client.watch(task_id, timeout=60)
    seen = []
    for ev in watch:
        seen.append(ev)
        if ev.progress.message:  # the handler is running
            break
    client.cancel(task_id)
    rest = list(watch)
    assert states(rest)[-1] == "CANCELLED"
    # The worker saw the signal (or its next append was rejected) and acked the task.
    info = wait_until_acked(dev, "py.reverse")
    assert info.num_ack_pending == 0, py_worker.tail()
    assert len([e for e in seen + rest if e.progress.message]) < 40
    # No event after CANCELLED: the handler stopped.
    time.sleep(0.5)
    assert states(history(client, task_id))[-1] == "CANCELLED"


def test_python_task_timeout_is_retried_then_fails(dev: Dev, client: Client, py_worker: PyWorker) -> None:
    task_id = grpcurl_submit(
        dev,
        {"kind": "py.reverse", "input": {"text": "a b c d e f", "delay_ms": 1000}, "max_attempts": 2, "timeout": "0.5s"},
    )
    events = list(client.watch(task_id, timeout=60))
    assert states(events)[-1] == "FAILED", states(events)
    codes = [e.error.code for e in events if e.state in (task_pb2.TASK_STATE_RETRYING, task_pb2.TASK_STATE_FAILED)]
    assert codes[-1] == "DEADLINE_EXCEEDED" and set(codes) == {"DEADLINE_EXCEEDED"}
    assert events[-1].attempt == 2
    full = history(client, task_id)
    assert [(state_name(e.state), e.attempt) for e in full if not e.progress.message] == [
        ("RUNNING", 1), ("RETRYING", 1), ("RUNNING", 2), ("FAILED", 2),
    ]
    assert "ran past its 500ms timeout" in events[-1].error.message


@pytest.mark.parametrize("kind", ["demo.echo"])
def test_rust_kinds_still_run_beside_the_python_worker(dev: Dev, client: Client, py_worker: PyWorker, kind: str) -> None:
    task_id = client.submit(kind, {"hello": "rust"})
    events = list(client.watch(task_id, timeout=30))
    assert states(events)[-1] == "SUCCEEDED"
    assert from_value(events[-1].output) == {"hello": "rust"}


def test_heartbeats_keep_a_long_python_task_on_its_first_attempt(
    dev: Dev, client: Client, py_worker: PyWorker
) -> None:
    """The task runs longer than ack_wait (5s): only the +WPI heartbeats keep JetStream
    from redelivering it to start a second attempt."""
    words = [f"w{i}" for i in range(7)]
    task_id = client.submit("py.reverse", {"text": " ".join(words), "delay_ms": 1000})
    events = list(client.watch(task_id, timeout=60))
    assert states(events)[-1] == "SUCCEEDED"
    full = history(client, task_id)
    assert {e.attempt for e in full} == {1}, [(state_name(e.state), e.attempt) for e in full]
    assert states(full) == ["RUNNING"] * (len(words) + 1) + ["SUCCEEDED"]
    assert full[-1].time.ToDatetime() - full[0].time.ToDatetime() > datetime.timedelta(seconds=WORKER_ACK_WAIT)


def test_python_events_carry_their_kind_for_watch_tasks(dev: Dev, client: Client, py_worker: PyWorker) -> None:
    """WatchTasks filters the live feed by Event.kind, which the Python worker sets."""
    import uuid

    tag = uuid.uuid4().hex[:10]
    got: list[task_pb2.TaskEvent] = []
    with Client(dev.address) as feed_client:
        feed = feed_client.watch_tasks(kind="py.reverse", labels={"feed": tag}, timeout=30)
        t = collect_in_thread(feed, got, until=lambda ev: ev.state == task_pb2.TASK_STATE_SUCCEEDED)
        time.sleep(1.0)  # live only: let the stream start first
        task_id = client.submit("py.reverse", {"text": "a b c", "delay_ms": 300}, labels={"feed": tag})
        t.join(timeout=30)
    assert got and {e.task_id for e in got} == {task_id}
    assert states(got)[-1] == "SUCCEEDED"
    words = [e.progress.message for e in got if e.progress.message and e.state == task_pb2.TASK_STATE_RUNNING]
    assert words and words == ["c", "b", "a"][-len(words) :]

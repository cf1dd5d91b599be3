"""Batch submit (TaskService/SubmitTasks) against a live `taskwire dev`: a malformed
task among valid keyed ones is refused alone (code 3, in its result) while the others
are accepted and succeed; resending the batch answers the same ids, deduplicated; an
empty or oversized batch is the whole call's INVALID_ARGUMENT, with nothing written;
the client's own refusals come before any call. Sync and async."""

from __future__ import annotations

import datetime
import uuid
import warnings
from typing import Any

import grpc
import pytest

from conftest import Dev, free_port
from helpers import async_final_status, final_status
from taskwire import AsyncClient, Client, SubmitResult, TaskSpec, TaskwireError, TaskwireWarning
from taskwire.client import TaskSpecLike, from_value, state_name

BAD_KIND = "Bad Kind!"  # upper case, a space and "!": not [a-z0-9][a-z0-9._-]*


def _batch(tag: str) -> list[TaskSpecLike]:
    """Four keyed tasks, the second malformed; the third as a plain dict, the last
    delayed by a second (SCHEDULED first)."""
    labels = {"batch": tag}
    return [
        TaskSpec("demo.echo", {"i": 0, "tag": tag}, idempotency_key=f"{tag}-0", labels=labels, max_attempts=2),
        TaskSpec(BAD_KIND, {"i": 1}, idempotency_key=f"{tag}-1", labels=labels),
        {"kind": "demo.echo", "input": {"i": 2}, "idempotency_key": f"{tag}-2", "labels": labels, "task_timeout": 30},
        TaskSpec("demo.echo", {"i": 3}, idempotency_key=f"{tag}-3", labels=labels, delay=1),
    ]


def _input(spec: TaskSpecLike) -> Any:
    return spec.input if isinstance(spec, TaskSpec) else spec["input"]  # type: ignore[index]


def _assert_refused(r: SubmitResult) -> None:
    assert not r.ok and r.code == 3, r
    assert r.status_code == grpc.StatusCode.INVALID_ARGUMENT
    assert "kind" in r.message, r
    assert r.task_id == "" and not r.deduplicated
    err = r.error
    assert isinstance(err, TaskwireError) and err.code == grpc.StatusCode.INVALID_ARGUMENT


def _assert_first_answers(results: list[SubmitResult]) -> list[str]:
    """The first submit of _batch: the bad one refused, the rest new; returns the ids
    of the accepted ones (indexes 0, 2, 3)."""
    assert len(results) == 4, results
    _assert_refused(results[1])
    accepted = [results[0], results[2], results[3]]
    for r in accepted:
        assert r.ok and r.code == 0 and r.error is None, r
        assert not r.deduplicated and r.warning == "", r
        uuid.UUID(r.task_id)
    assert [state_name(r.state) for r in accepted] == ["QUEUED", "QUEUED", "SCHEDULED"]
    ids = [r.task_id for r in accepted]
    assert len(set(ids)) == 3
    return ids


def _assert_resent(results: list[SubmitResult], ids: list[str]) -> None:
    """The same batch again: the same ids, deduplicated; the bad one refused again."""
    assert len(results) == 4, results
    _assert_refused(results[1])
    again = [results[0], results[2], results[3]]
    assert all(r.ok and r.deduplicated for r in again), again
    assert [r.task_id for r in again] == ids


def test_submit_tasks_refuses_only_the_malformed_task(client: Client) -> None:
    tag = uuid.uuid4().hex[:10]
    batch = _batch(tag)
    ids = _assert_first_answers(client.submit_tasks(batch))

    for task_id, spec in zip(ids, [batch[0], batch[2], batch[3]]):
        client.wait(task_id, timeout=60)
        done = final_status(client, task_id)
        assert state_name(done.state) == "SUCCEEDED", done
        assert from_value(done.output) == _input(spec)
    first = client.status(ids[0])
    assert first.max_attempts == 2 and dict(first.labels) == {"batch": tag}
    # Only the delayed one has a run_at.
    assert [client.status(i).HasField("run_at") for i in ids] == [False, False, True]
    # The refused task was not written.
    assert {t.id for t in client.list(labels={"batch": tag}).tasks} == set(ids)

    # Resending the whole batch (a generator works as well as a list).
    _assert_resent(client.submit_tasks(t for t in batch), ids)
    assert {t.id for t in client.list(labels={"batch": tag}).tasks} == set(ids)


def test_submit_tasks_whole_call_errors_raise(client: Client) -> None:
    with pytest.raises(TaskwireError) as empty:
        client.submit_tasks([])
    assert empty.value.code == grpc.StatusCode.INVALID_ARGUMENT, empty.value
    assert empty.value.method == "TaskService/SubmitTasks"

    tag = uuid.uuid4().hex[:10]
    too_many = [TaskSpec("demo.echo", {"i": i}, labels={"batch": tag}) for i in range(1001)]
    with pytest.raises(TaskwireError) as big:
        client.submit_tasks(too_many)
    assert big.value.code == grpc.StatusCode.INVALID_ARGUMENT, big.value
    assert "1001" in big.value.details, big.value
    # Nothing of it was written.
    assert list(client.list(labels={"batch": tag}).tasks) == []


def test_submit_tasks_reports_warnings_without_emitting(client: Client) -> None:
    tag = uuid.uuid4().hex[:10]
    with warnings.catch_warnings():
        warnings.simplefilter("error", TaskwireWarning)
        results = client.submit_tasks(
            [TaskSpec("demo.echo", {"w": tag}), TaskSpec("nobody.serves.this.batch", {"w": tag})]
        )
    assert [r.ok for r in results] == [True, True], results
    assert results[0].warning == ""
    assert "nobody.serves.this.batch" in results[1].warning, results[1]


def _refused_before_sending() -> list[tuple[type[Exception], str, Any]]:
    """Batches the client refuses itself: (error, message pattern, the batch)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return [
        (ValueError, r"tasks\[1\]: give delay or run_at", [TaskSpec("a.b"), TaskSpec("a.b", delay=5, run_at=now)]),
        (ValueError, r"tasks\[0\]: run_at must be a timezone-aware", [TaskSpec("a", run_at=now.replace(tzinfo=None))]),
        (TypeError, r"tasks\[0\]: unknown task field\(s\) timeout", [{"kind": "demo.echo", "timeout": 5}]),
        (TypeError, r"tasks\[0\]: .* missing 1 required positional argument: 'kind'", [{"input": 1}]),
        (TypeError, "not a single TaskSpec", TaskSpec("demo.echo")),
    ]


def test_submit_tasks_client_refusals(client: Client) -> None:
    for error, pattern, batch in _refused_before_sending():
        with pytest.raises(error, match=pattern):
            client.submit_tasks(batch)
    with pytest.raises(ValueError, match="traceparent"):
        client.submit_tasks([TaskSpec("demo.echo")], traceparent="00-not-a-trace-01")


async def test_async_submit_tasks_client_refusals_come_before_any_call() -> None:
    # Against no server at all: these errors, not UNAVAILABLE, so no call was made.
    # (An AsyncClient, as in test_delay.py: a blocking Client opened and closed without
    # a call can trip grpcio's connectivity-polling thread on the closed channel.)
    async with AsyncClient(f"127.0.0.1:{free_port()}", timeout=2) as nowhere:
        for error, pattern, batch in _refused_before_sending():
            with pytest.raises(error, match=pattern):
                await nowhere.submit_tasks(batch)
        with pytest.raises(ValueError, match="traceparent"):
            await nowhere.submit_tasks([TaskSpec("demo.echo")], traceparent="00-not-a-trace-01")


async def test_async_submit_tasks_refuses_only_the_malformed_task(dev: Dev) -> None:
    tag = uuid.uuid4().hex[:10]
    batch = _batch(tag)
    async with AsyncClient(dev.address, timeout=15) as client:
        ids = _assert_first_answers(await client.submit_tasks(batch))
        for task_id, spec in zip(ids, [batch[0], batch[2], batch[3]]):
            await client.wait(task_id, timeout=60)
            done = await async_final_status(client, task_id)
            assert state_name(done.state) == "SUCCEEDED", done
            assert from_value(done.output) == _input(spec)
        assert {t.id for t in (await client.list(labels={"batch": tag})).tasks} == set(ids)

        _assert_resent(await client.submit_tasks(batch), ids)

        with pytest.raises(TaskwireError) as empty:
            await client.submit_tasks([])
        assert empty.value.code == grpc.StatusCode.INVALID_ARGUMENT, empty.value

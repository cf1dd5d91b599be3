"""Small helpers shared by the tests."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import TypeVar

from taskwire.client import Client, is_terminal, state_name
from taskwire.v1 import task_pb2

T = TypeVar("T")


def eventually(fn: Callable[[], T], ok: Callable[[T], bool], timeout: float = 10.0, every: float = 0.05) -> T:
    """Calls fn until ok(result) or the timeout; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(every)


def final_status(client: Client, task_id: str, timeout: float = 10.0) -> task_pb2.Task:
    """The task's record once the recorder has applied its terminal event (the watch
    reads NATS, GetStatus the database, which the recorder updates a moment later)."""
    return eventually(lambda: client.status(task_id), lambda t: is_terminal(t.state), timeout)


def history(client: Client, task_id: str, timeout: float = 30.0) -> list[task_pb2.TaskEvent]:
    """Every stored event of a finished task, oldest first: a watch from after_seq = 1
    (after_seq = 0 would start with a snapshot instead). Only the first event stored
    on a server can have seq 1: the dev fixtures run a warm-up task first."""
    events = list(client.watch(task_id, after_seq=1, timeout=timeout))
    # A history starts with RUNNING (a worker's claim) or CANCELLED (the api).
    assert events and states(events[:1])[0] in ("RUNNING", "CANCELLED"), states(events)
    return events


def states(events: Iterable[task_pb2.TaskEvent]) -> list[str]:
    return [state_name(e.state) for e in events]


def assert_strictly_increasing(seqs: list[int]) -> None:
    assert all(a < b for a, b in zip(seqs, seqs[1:])), f"seqs not strictly increasing: {seqs}"

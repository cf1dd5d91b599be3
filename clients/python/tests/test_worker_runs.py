"""A Python worker's task across runs (docs/protocol.md §4, §5 step 11, §7), against
dev's NATS with an in-process Worker for a kind of the test's own: a task that always
fails ends FAILED; ``retry`` starts run 2, which fails again; ``attempts`` lists both
runs' attempts with the Python worker's name (``Event.worker`` on each claim, and on no
other event); and TASKWIRE_DLQ holds one dead-letter copy per run, with
``Nats-Msg-Id`` ``<id>`` and ``<id>:2`` (one id for both would have JetStream's
duplicate window drop the second copy).
"""

from __future__ import annotations

import uuid
from typing import Any

from conftest import Dev
from helpers import async_eventually, nats_connection, running_worker, stored_messages
from taskwire import AsyncClient
from taskwire.client import state_name
from taskwire.internal.v1 import messages_pb2
from taskwire.v1 import task_pb2
from taskwire.worker import TaskContext, TaskFailure, task_msg_id, worker_name

WAIT = 30.0


def test_task_msg_id_is_the_runs() -> None:
    tid = "0192f4e2-6c1a-7d3e-9a4b-1f2e3d4c5b6a"
    assert task_msg_id(tid, 0) == tid
    assert task_msg_id(tid, 1) == tid
    assert task_msg_id(tid, 2) == f"{tid}:2"
    assert task_msg_id(tid, 17) == f"{tid}:17"


def test_worker_name() -> None:
    name = worker_name()
    host, _, pid = name.removeprefix("taskwire-python-worker@").rpartition(":")
    assert name.startswith("taskwire-python-worker@") and host and pid.isdigit(), name


async def test_a_retried_python_run_gets_its_own_dead_letter_and_both_attempts_name_the_worker(dev: Dev) -> None:
    kind = f"py.rerun-{uuid.uuid4().hex[:8]}"
    ran: list[int] = []

    async def handler(ctx: TaskContext) -> Any:
        ran.append(ctx.attempt)
        await ctx.progress(0.5, "half way")  # a RUNNING event that is not a claim
        raise TaskFailure.fatal(f"{kind} always fails", code="PY_RERUN")

    async with nats_connection(dev.nats_url) as nc, AsyncClient(dev.address, timeout=15) as tw:
        jsm = nc.jsm(timeout=5)
        dlq_subject = f"taskwire.dlq.{kind}"

        async def dead_letters() -> list[Any]:
            return await stored_messages(jsm, "TASKWIRE_DLQ", dlq_subject)

        async with running_worker(dev.nats_url, kind, handler):
            task_id = await tw.submit(kind, {"n": 1}, max_attempts=2)

            async def status() -> task_pb2.Task:
                return await tw.status(task_id)

            first = await async_eventually(
                status, lambda t: t.run <= 1 and state_name(t.state) == "FAILED", timeout=WAIT
            )
            assert state_name(first.state) == "FAILED", first
            assert first.attempt == 1 and first.error.code == "PY_RERUN" and not first.error.retryable, first
            copies = await async_eventually(dead_letters, lambda c: len(c) >= 1, timeout=WAIT)
            assert len(copies) == 1, copies

            retried = await tw.retry(task_id)
            assert retried.id == task_id and retried.run == 2, retried
            second = await async_eventually(
                status, lambda t: t.run == 2 and state_name(t.state) == "FAILED", timeout=WAIT
            )
            assert second.run == 2 and state_name(second.state) == "FAILED", second
            assert second.attempt == 1 and second.error.code == "PY_RERUN", second
            copies = await async_eventually(dead_letters, lambda c: len(c) >= 2, timeout=WAIT)
        assert ran == [1, 1], "one attempt per run: the failure is not retryable"

        # One dead-letter copy per run, each under its run's Nats-Msg-Id: the second run
        # failed well within the duplicate window (10 minutes) of the first.
        assert [c.headers["Nats-Msg-Id"] for c in copies] == [task_id, f"{task_id}:2"], [c.headers for c in copies]
        bodies = [messages_pb2.TaskMessage.FromString(c.data) for c in copies]
        assert [b.task_id for b in bodies] == [task_id, task_id]
        assert bodies[0].run in (0, 1) and bodies[1].run == 2, [b.run for b in bodies]
        assert {b.kind for b in bodies} == {kind}
        for c in copies:
            assert c.headers["Taskwire-Error-Code"] == "PY_RERUN"
            assert c.headers["Taskwire-Error-Retryable"] == "false"
            assert c.headers["Taskwire-Schema"] == "1"

        # The attempt history: both runs, each attempt named after this process.
        attempts = await tw.attempts(task_id)
        assert [(a.run, a.attempt, state_name(a.outcome)) for a in attempts] == [
            (1, 1, "FAILED"),
            (2, 1, "FAILED"),
        ], attempts
        for a in attempts:
            assert a.worker.startswith("taskwire-python-worker@"), a
            assert a.worker == worker_name(), a
            assert a.error.code == "PY_RERUN", a

        # Event.worker is on each claim (an attempt's first RUNNING event) and on no
        # other event: not on progress, FAILED, nor the api's QUEUED of run 2.
        events = [
            messages_pb2.Event.FromString(raw.data)
            for raw in await stored_messages(jsm, "TASKWIRE_EVENTS", f"taskwire.events.{task_id}")
        ]
        seen = [(state_name(e.state), e.attempt, e.run, e.worker) for e in events]
        me = worker_name()
        assert seen == [
            ("RUNNING", 1, 0, me),
            ("RUNNING", 1, 0, ""),
            ("FAILED", 1, 0, ""),
            ("QUEUED", 0, 2, ""),
            ("RUNNING", 1, 0, me),
            ("RUNNING", 1, 0, ""),
            ("FAILED", 1, 0, ""),
        ], seen

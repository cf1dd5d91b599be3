"""SubmitTask's `warning` (no worker has ever served the kind, usually a typo) reaches
Python callers: `submit` emits a TaskwireWarning and still returns the task's id;
`submit_task` returns it in the response."""

from __future__ import annotations

import uuid
import warnings

import pytest

from conftest import Dev
from taskwire import AsyncClient, Client, TaskwireWarning
from taskwire.client import state_name

UNSERVED = "nobody.serves.this"


def test_submit_of_an_unserved_kind_warns(client: Client) -> None:
    tag = uuid.uuid4().hex[:10]
    with pytest.warns(TaskwireWarning, match=r"nobody\.serves\.this") as record:
        task_id = client.submit(UNSERVED, {"n": 1}, labels={"warning": tag})
    assert len(record) == 1
    # Points at the caller's line, not at the client's internals.
    assert record[0].filename == __file__
    # Accepted all the same: the id comes back, and the task waits, queued.
    uuid.UUID(task_id)
    assert state_name(client.status(task_id).state) == "QUEUED"

    # submit_task hands back the whole response, warning included, and warns nothing.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resp = client.submit_task(UNSERVED, {"n": 2}, labels={"warning": tag})
    assert UNSERVED in resp.warning and not resp.deduplicated


def test_submit_of_a_demo_kind_does_not_warn(client: Client, recwarn: pytest.WarningsRecorder) -> None:
    task_id = client.submit("demo.echo", {"warn": False})
    uuid.UUID(task_id)
    assert [w for w in recwarn if issubclass(w.category, TaskwireWarning)] == []
    assert client.submit_task("demo.sleep", {"seconds": 0}).warning == ""


async def test_async_submit_warns_only_for_an_unserved_kind(dev: Dev, recwarn: pytest.WarningsRecorder) -> None:
    async with AsyncClient(dev.address, timeout=15) as client:
        task_id = await client.submit("demo.echo", {"warn": False})
        uuid.UUID(task_id)
        assert [w for w in recwarn if issubclass(w.category, TaskwireWarning)] == []

        with pytest.warns(TaskwireWarning, match=r"nobody\.serves\.this") as record:
            queued = await client.submit(UNSERVED, {"n": 3})
        assert len(record) == 1 and record[0].filename == __file__
        uuid.UUID(queued)
        assert state_name((await client.status(queued)).state) == "QUEUED"

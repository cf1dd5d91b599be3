"""Example taskwire worker in Python: serves ``py.reverse`` and ``py.fail`` next to the
Rust workers.

    # terminal 1: the whole system (api, Rust worker, recorder, watch) on one address
    target/debug/taskwire dev --listen 127.0.0.1:50051 --data-dir .taskwire
    # terminal 2: this worker, joining dev's NATS
    python clients/python/examples/reverse_worker.py --nats-url "$(cat .taskwire/nats-url)"
    # terminal 3: a task for it
    grpcurl -plaintext -d '{"kind":"py.reverse","input":{"text":"hello big world"}}' \
        127.0.0.1:50051 taskwire.v1.TaskService/SubmitTask

Kinds:
- ``py.reverse``: ``{"text": str, "delay_ms": n}`` -> ``{"reversed": str}``: the words in
  reverse order, one progress event per word (message = the word), ``delay_ms`` between
  them (default 20).
- ``py.fail``: always fails with code ``PY_FAILURE``; retryably unless
  ``{"retryable": false}``, so it shows retries with backoff, max_attempts and the DLQ.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

try:
    import taskwire  # noqa: F401  (only: is it importable?)
except ImportError:  # running from a checkout without `pip install -e clients/python`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from taskwire.worker import TaskContext, TaskFailure, Worker, from_args, main_args


async def reverse(ctx: TaskContext) -> Any:
    input = ctx.input if isinstance(ctx.input, dict) else {}
    text = input.get("text")
    if not isinstance(text, str):
        raise TaskFailure.fatal('input must be {"text": "..."}', code="BAD_INPUT")
    delay = input.get("delay_ms", 20)
    if not isinstance(delay, (int, float)) or not 0 <= delay <= 60_000:
        raise TaskFailure.fatal("delay_ms must be 0..=60000", code="BAD_INPUT")
    words = text.split()
    done: list[str] = []
    for i, word in enumerate(reversed(words), 1):
        await ctx.sleep(delay / 1000)  # raises Stopped when the task is cancelled
        done.append(word)
        await ctx.progress(i / len(words), word)
    return {"reversed": " ".join(done)}


async def fail(ctx: TaskContext) -> Any:
    retryable = not (isinstance(ctx.input, dict) and ctx.input.get("retryable") is False)
    raise TaskFailure(
        f"py.fail always fails (attempt {ctx.attempt} of {ctx.max_attempts})",
        code="PY_FAILURE",
        retryable=retryable,
    )


def build(worker: Worker) -> Worker:
    """Registers this example's kinds on a worker."""
    return worker.register("py.reverse", reverse).register("py.fail", fail)


def main(argv: list[str] | None = None) -> None:
    args = main_args(argv, description="taskwire example worker: py.reverse, py.fail")
    worker = build(from_args(args))
    asyncio.run(worker.run())


if __name__ == "__main__":
    main()

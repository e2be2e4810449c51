"""The jobs of one HTTP request (its ``n`` samples) read as one stream of indexed deliveries.

Each job is read by a task of its own that hands ``(index, item)`` on through a queue of
``len(jobs)`` places: a reader that stops reading stops the tasks, so the jobs' own backlog
bound (see :class:`~prefixkv.server.scheduler.Job`) still cuts a slow reader off.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Sequence

from prefixkv.engine.request import Completion
from prefixkv.engine.role import Delivery
from prefixkv.server.scheduler import Job

Indexed = tuple[int, Delivery | BaseException]


async def merged(jobs: Sequence[Job]) -> AsyncGenerator[tuple[int, Delivery]]:
    """Every job's deliveries as they come, each with its job's index, until every job
    delivered its Completion. Read it under ``contextlib.aclosing`` (so that its tasks
    stop when the reader does, even when cancelled). Raises the first error any job raises (RequestCancelled
    included); on leaving, early or not, stops reading (the caller cancels the jobs)."""
    queue: asyncio.Queue[Indexed] = asyncio.Queue(maxsize=len(jobs))
    tasks = [asyncio.create_task(_pump(i, job, queue)) for i, job in enumerate(jobs)]
    try:
        remaining = len(jobs)
        while remaining:
            index, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            yield index, item
            if isinstance(item, Completion):
                remaining -= 1
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _pump(index: int, job: Job, queue: asyncio.Queue[Indexed]) -> None:
    try:
        async for item in job.events():
            await queue.put((index, item))
    except Exception as exc:  # the job's error, passed to the reader
        await queue.put((index, exc))


async def results(jobs: Sequence[Job]) -> list[Completion]:
    """Every job's Completion, in order; raises the first error any job raises."""
    completions: list[Completion | None] = [None] * len(jobs)
    async with contextlib.aclosing(merged(jobs)) as items:
        async for index, item in items:
            if isinstance(item, Completion):
                completions[index] = item
    return [c for c in completions if c is not None]

"""Job: the bound on undelivered items (a client that stops reading is cut off)."""

from __future__ import annotations

import asyncio

from prefixkv.engine.request import Completion, SamplingParams
from prefixkv.server.scheduler import Job

from .fake_engine import FakeEngine


def _completion() -> Completion:
    return Completion("", (), 1, 0, "length", 0.0, 0.0)


def test_a_reader_that_falls_behind_is_cancelled_and_flagged() -> None:
    async def scenario() -> Job:
        request = FakeEngine().request("hi", SamplingParams(), namespace=None, default_max_tokens=4)
        job = Job(request, "chat", 0.0, max_backlog=3)
        for _ in range(3):
            job.deliver("x")
        assert not job.cancelled
        job.deliver("y")  # the fourth unread item: over the bound
        return job

    job = asyncio.run(scenario())
    assert job.cancelled and job.slow_reader


def test_a_reader_that_keeps_up_is_never_cut_off() -> None:
    async def scenario() -> tuple[Job, list[str | Completion]]:
        request = FakeEngine().request("hi", SamplingParams(), namespace=None, default_max_tokens=4)
        job = Job(request, "chat", 0.0, max_backlog=2)
        seen: list[str | Completion] = []
        events = job.events()
        for i in range(10):
            job.deliver(str(i))
            seen.append(await anext(events))
        job.deliver(_completion())
        seen.append(await anext(events))
        return job, seen

    job, seen = asyncio.run(scenario())
    assert not job.cancelled and not job.slow_reader
    assert seen[:10] == [str(i) for i in range(10)] and isinstance(seen[-1], Completion)

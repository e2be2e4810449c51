"""FIFO scheduling: one worker thread runs requests one at a time, in order of arrival.

The event loop must never run the model (it would stall every other connection), and on a
CPU two generations at once only share the same cores, so one worker in arrival order gives
each request the whole machine and the earliest ones the earliest answers.

A Job carries its results back to the event loop through an asyncio queue fed with
``loop.call_soon_threadsafe``. Cancelling a Job (its client went away, or the server stops)
sets a flag the worker reads between tokens: a queued job is then skipped, a running one has
its engine stream closed, which releases the cache lease (its pinned blocks) at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Hashable
from typing import Literal

from prefixkv.engine.engine import Completion, Engine
from prefixkv.engine.sampling import SamplingParams

log = logging.getLogger("prefixkv.server")

Outcome = Literal["pending", "completed", "failed", "skipped", "stopped"]
"""``skipped``: cancelled while queued; ``stopped``: cancelled while generating."""


class JobCancelled(Exception):
    """The job was cancelled before it finished (client gone or server shutting down)."""


class QueueFullError(Exception):
    """The queue already holds the configured maximum of waiting jobs."""


class Job:
    """One validated request: its prompt ids, sampling, cache namespace and result channel.
    ``endpoint`` names the API it came from (a metrics label). Create it on the event loop."""

    def __init__(
        self, ids: list[int], params: SamplingParams, namespace: Hashable, endpoint: str
    ) -> None:
        self.ids = ids
        self.params = params
        self.namespace = namespace
        self.endpoint = endpoint
        self.outcome: Outcome = "pending"
        self.completion: Completion | None = None
        self.arrived = time.perf_counter()
        self.first_output: float | None = None
        self.finished: float | None = None
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[str | Completion | BaseException] = asyncio.Queue()
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Ask the worker to skip or stop this job. Idempotent; any thread."""
        self._cancelled.set()

    async def events(self) -> AsyncIterator[str | Completion]:
        """Text deltas, then the Completion. Raises the job's error or JobCancelled."""
        while True:
            item = await self._events.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Completion):
                return

    async def result(self) -> Completion:
        async for item in self.events():
            if isinstance(item, Completion):
                return item
        raise AssertionError("events() ended without a Completion")  # pragma: no cover

    # --- worker side ---------------------------------------------------------------------

    def deliver(self, item: str | Completion | BaseException) -> None:
        if self.first_output is None and not isinstance(item, BaseException):
            self.first_output = time.perf_counter()
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody can read this job any more
            self.cancel()

    def finish(self, outcome: Outcome, error: BaseException | None = None) -> None:
        self.outcome = outcome
        self.finished = time.perf_counter()
        if error is not None:
            self.deliver(error)


class Scheduler:
    """Runs Jobs on one worker thread in submission order. ``on_finish(job)`` is called on
    the worker after each job, whatever its outcome (metrics set it after construction)."""

    def __init__(
        self,
        engine: Engine,
        max_queue: int,
        on_finish: Callable[[Job], None] = lambda job: None,
    ) -> None:
        self._engine = engine
        self._max_queue = max_queue
        self.on_finish = on_finish
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._current: Job | None = None

    @property
    def pending(self) -> int:
        """Jobs waiting for the worker (the running one excluded)."""
        return self._queue.qsize()

    def start(self) -> None:
        # daemon: a generation stuck in the model must not keep a stopping process alive.
        self._thread = threading.Thread(target=self._work, name="prefixkv-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        """Queue ``job`` behind every earlier one; QueueFullError when the queue is full."""
        if self._thread is None:
            raise JobCancelled("the server is not running")
        if self._queue.qsize() >= self._max_queue:
            raise QueueFullError(f"{self._max_queue} requests are already waiting")
        self._queue.put(job)

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel every queued and running job, then wait up to ``timeout`` for the worker."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel()
                job.finish("skipped", JobCancelled("the server is shutting down"))
                self.on_finish(job)
        if self._current is not None:
            self._current.cancel()
        self._queue.put(None)
        thread.join(timeout)

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            self._current = job
            try:
                self._run(job)
            finally:
                self._current = None
                self.on_finish(job)

    def _run(self, job: Job) -> None:
        if job.cancelled:
            job.finish("skipped", JobCancelled("the request was cancelled while queued"))
            return
        sampling = dataclasses.asdict(job.params)
        try:
            stream = self._engine.stream(job.ids, namespace=job.namespace, **sampling)
        except Exception as exc:
            job.finish("failed", exc)
            return
        try:
            for item in stream:
                if job.cancelled:  # checked once per token
                    job.finish("stopped", JobCancelled("the request was cancelled"))
                    return
                job.deliver(item)
                if isinstance(item, Completion):
                    job.completion = item
            job.finish("completed")
        except Exception as exc:
            log.exception("generation failed")
            job.finish("failed", exc)
        finally:
            stream.close()  # a stream closed early releases its cache lease

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
import contextlib
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Literal

from prefixkv.engine.request import Completion, Request
from prefixkv.engine.role import EngineRole
from prefixkv.server.throttle import report_failure

log = logging.getLogger("prefixkv.server")

Outcome = Literal["pending", "completed", "failed", "skipped", "stopped"]
"""``skipped``: cancelled while queued; ``stopped``: cancelled while generating."""


class JobCancelled(Exception):
    """The job was cancelled before it finished (client gone or server shutting down)."""


class QueueFullError(Exception):
    """The queue already holds the configured maximum of waiting jobs."""


class Job:
    """One validated Request and its result channel. ``endpoint`` names the API it came from
    (a metrics label). Create it on the event loop."""

    def __init__(self, request: Request, endpoint: str, arrived: float) -> None:
        self.request = request
        self.endpoint = endpoint
        self.arrived = arrived  # perf_counter() when the HTTP request came in
        self.outcome: Outcome = "pending"
        self.completion: Completion | None = None
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


class Slot:
    """One admitted request's place in the queue (from :meth:`Scheduler.reserve`)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self.submitted = False

    def submit(self, job: Job) -> None:
        """Queue ``job`` behind every earlier one. Raises JobCancelled if the server began
        shutting down meanwhile."""
        self._scheduler._enqueue(job)
        self.submitted = True


class Scheduler:
    """Runs Jobs on one worker thread in submission order. ``on_finish(job)`` is called on
    the worker after each job, whatever its outcome (metrics set it after construction).

    Admission is bounded: a request holds one of ``max_queue`` slots from :meth:`reserve`
    (while it is being tokenized) until the worker takes its job; a request that finds no
    free slot gets QueueFullError at once, before any work.
    """

    def __init__(
        self,
        engine: EngineRole,
        max_queue: int,
        on_finish: Callable[[Job], None] = lambda job: None,
    ) -> None:
        self._engine = engine
        self._max_queue = max_queue
        self.on_finish = on_finish
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._current: Job | None = None
        self._lock = threading.Lock()
        self._waiting = 0  # slots held: requests being prepared or queued
        self._accepting = False

    @property
    def pending(self) -> int:
        """Requests admitted and not yet running: being tokenized or queued."""
        return self._waiting

    def start(self) -> None:
        # daemon: a generation stuck in the model must not keep a stopping process alive.
        self._thread = threading.Thread(target=self._work, name="prefixkv-worker", daemon=True)
        self._accepting = True
        self._thread.start()

    @contextlib.contextmanager
    def reserve(self) -> Iterator[Slot]:
        """Hold one queue slot for a request being prepared; submit its job through the slot.
        Raises QueueFullError when every slot is held, JobCancelled when the server is not
        accepting. Leaving the block without submitting frees the slot."""
        with self._lock:
            if not self._accepting:
                raise JobCancelled("the server is shutting down")
            if self._waiting >= self._max_queue:
                raise QueueFullError(f"{self._max_queue} requests are already waiting")
            self._waiting += 1
        slot = Slot(self)
        try:
            yield slot
        finally:
            if not slot.submitted:
                with self._lock:
                    self._waiting -= 1

    def _enqueue(self, job: Job) -> None:
        with self._lock:  # atomic with drain(): a job is either queued and drained, or refused
            if not self._accepting:
                raise JobCancelled("the server is shutting down")
            self._queue.put(job)

    def drain(self) -> None:
        """Stop accepting; every queued job gets JobCancelled at once (its client a 503).
        The running job goes on. Idempotent; any thread."""
        with self._lock:
            self._accepting = False
            drained = []
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    self._waiting -= 1
                    drained.append(job)
        for job in drained:
            job.cancel()
            job.finish("skipped", JobCancelled("the server is shutting down"))
            self.on_finish(job)

    def cancel_running(self) -> None:
        """Cancel the job the worker is running, if any (it stops at the next token)."""
        job = self._current
        if job is not None:
            job.cancel()

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the worker to run nothing and have nothing
        queued; True if it got there."""
        deadline = time.monotonic() + timeout
        while self._current is not None or self._queue.qsize():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Drain, cancel the running job, then wait up to ``timeout`` for the worker."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self.drain()
        self.cancel_running()
        self._queue.put(None)
        thread.join(timeout)

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            with self._lock:
                self._waiting -= 1
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
        stream = self._engine.run(job.request)
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
            report_failure(log, "generation failed", exc)
            job.finish("failed", exc)
        finally:
            stream.close()  # a stream closed early releases its cache lease

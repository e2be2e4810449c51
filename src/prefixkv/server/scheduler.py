"""Admission and the job record: requests wait in bounded slots, then a backend runs them.

The event loop must never run the model (it would stall every other connection). A backend
(:mod:`prefixkv.server.backends`) runs jobs off the loop: the serial one runs one request at
a time in arrival order; the batch one hands every job to the engine's batch runner, which
serves many together.

A Job carries its results back to the event loop through an asyncio queue fed with
``loop.call_soon_threadsafe``. Cancelling a Job (its client went away, or the server stops)
sets a flag the backend reads between tokens: a waiting job is then skipped, a running one
stops and releases its cached blocks at once. A client that stops reading is cut off too:
past ``max_backlog`` undelivered items its job is cancelled (counted as a slow reader), so it
neither stalls the batch nor holds memory without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Protocol

from prefixkv.engine.request import Completion, Request
from prefixkv.engine.role import Delivery, Outcome, RequestCancelled
from prefixkv.server.throttle import report_failure

log = logging.getLogger("prefixkv.server")

DEFAULT_MAX_BACKLOG = 4096
"""Undelivered items (text deltas) a job may hold before its reader counts as gone."""


class QueueFullError(Exception):
    """The queue already holds the configured maximum of waiting jobs."""


class Job:
    """One validated Request and its result channel; implements the engine's Sink.
    ``endpoint`` names the API it came from (a metrics label). Create it on the event loop."""

    def __init__(
        self,
        request: Request,
        endpoint: str,
        arrived: float,
        max_backlog: int = DEFAULT_MAX_BACKLOG,
    ) -> None:
        self.request = request
        self.endpoint = endpoint
        self.arrived = arrived  # perf_counter() when the HTTP request came in
        self.outcome: Outcome = "pending"
        self.completion: Completion | None = None
        self.first_output: float | None = None
        self.finished: float | None = None
        self.slow_reader = False
        self.on_finish: Callable[[Job], None] = lambda job: None
        self._max_backlog = max_backlog
        self._sent = 0  # items delivered (backend thread only)
        self._taken = 0  # items read (event loop only)
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue[Delivery | BaseException] = asyncio.Queue()
        self._cancelled = threading.Event()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Ask the backend to skip or stop this job. Idempotent; any thread."""
        self._cancelled.set()

    async def events(self) -> AsyncIterator[Delivery]:
        """Text deltas (and TokenLogprobs), then the Completion. Raises the job's error or RequestCancelled."""
        while True:
            item = await self._events.get()
            self._taken += 1
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

    # --- backend side --------------------------------------------------------------------

    def deliver(self, item: Delivery | BaseException) -> None:
        if self.first_output is None and not isinstance(item, BaseException):
            self.first_output = time.perf_counter()
        if isinstance(item, Completion):
            self.completion = item
        elif not isinstance(item, BaseException) and self._sent - self._taken >= self._max_backlog:
            self.slow_reader = True  # the reader fell too far behind: stop generating for it
            self.cancel()
            return
        self._sent += 1
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody can read this job any more
            self.cancel()

    def finish(self, outcome: Outcome, error: BaseException | None = None) -> None:
        if outcome == "failed" and error is not None:
            report_failure(log, "generation failed", error)
        self.outcome = outcome
        self.finished = time.perf_counter()
        if error is not None:
            self.deliver(error)
        self.on_finish(self)


class Backend(Protocol):
    """Runs submitted jobs off the event loop (see :mod:`prefixkv.server.backends`)."""

    @property
    def waiting(self) -> int:
        """Jobs submitted and not yet running."""
        ...

    @property
    def running(self) -> int: ...

    def start(self) -> None: ...

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises RequestCancelled when no longer accepting."""
        ...

    def drain(self) -> None:
        """Stop accepting; every waiting job finishes as skipped at once."""
        ...

    def cancel_running(self) -> None:
        """Running jobs stop at their next token."""
        ...

    def wait_idle(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for nothing to run or wait; True if it got there."""
        ...

    def stop(self, timeout: float = 10.0) -> None:
        """Drain, cancel what runs, and wait up to ``timeout`` for the threads."""
        ...


class Slot:
    """One admitted request's place in the queue (from :meth:`Scheduler.reserve`)."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self.submitted = False

    def submit(self, job: Job) -> None:
        """Hand ``job`` to the backend. Raises RequestCancelled if the server began shutting
        down meanwhile."""
        self._scheduler._enqueue(job)
        self.submitted = True


class Scheduler:
    """Bounded admission in front of a backend. ``on_finish(job)`` is called on the
    backend's thread after each job, whatever its outcome (metrics set it).

    A request holds one of ``max_queue`` slots from :meth:`reserve` (while it is being
    tokenized) until the backend starts running it; a request that finds no free slot gets
    QueueFullError at once, before any work.
    """

    def __init__(
        self,
        backend: Backend,
        max_queue: int,
        on_finish: Callable[[Job], None] = lambda job: None,
    ) -> None:
        self.backend = backend
        self._max_queue = max_queue
        self.on_finish = on_finish
        self._lock = threading.Lock()
        self._preparing = 0
        self._accepting = False

    @property
    def pending(self) -> int:
        """Requests admitted and not yet running: being tokenized or waiting."""
        return self._preparing + self.backend.waiting

    def start(self) -> None:
        self._accepting = True
        self.backend.start()

    @contextlib.contextmanager
    def reserve(self) -> Iterator[Slot]:
        """Hold one slot for a request being prepared; submit its job through the slot.
        Raises QueueFullError when every slot is held, RequestCancelled when the server is
        not accepting. Leaving the block without submitting frees the slot."""
        with self._lock:
            if not self._accepting:
                raise RequestCancelled("the server is shutting down")
            if self.pending >= self._max_queue:
                raise QueueFullError(f"{self._max_queue} requests are already waiting")
            self._preparing += 1
        slot = Slot(self)
        try:
            yield slot
        finally:
            with self._lock:
                self._preparing -= 1

    def _enqueue(self, job: Job) -> None:
        job.on_finish = self.on_finish
        with self._lock:  # atomic with drain(): a job is either queued and drained, or refused
            if not self._accepting:
                raise RequestCancelled("the server is shutting down")
            self.backend.submit(job)

    def drain(self) -> None:
        """Stop accepting; every waiting job gets RequestCancelled at once (its client a
        503). Running jobs go on. Idempotent; any thread."""
        with self._lock:
            self._accepting = False
        self.backend.drain()

    def cancel_running(self) -> None:
        self.backend.cancel_running()

    def wait_idle(self, timeout: float) -> bool:
        return self.backend.wait_idle(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self.drain()
        self.backend.stop(timeout)

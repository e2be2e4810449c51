"""Backends: what runs the scheduler's jobs, off the event loop.

- :class:`SerialBackend`: one worker thread, one request at a time in arrival order (the
  reference, and the fallback for models the batch runner does not support).
- :class:`BatchBackend`: the engine's :class:`~prefixkv.engine.batch.runner.BatchRunner`;
  each job is the Sink of its request, so the runner reports to it directly.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from prefixkv.engine.role import EngineRole, RequestCancelled
from prefixkv.server.scheduler import Job
from prefixkv.server.throttle import report_failure
from prefixkv.threads import compute_on, current_threads

log = logging.getLogger("prefixkv.server")


class SerialBackend:
    """Runs jobs one at a time on one worker thread, in submission order."""

    def __init__(self, engine: EngineRole, threads: int | None = None) -> None:
        """``threads``: the cores the worker's torch ops use (see
        :mod:`prefixkv.threads`; default: those of the thread that calls ``start``)."""
        self._engine = engine
        self._threads = threads
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._current: Job | None = None
        self._lock = threading.Lock()
        self._accepting = True

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    @property
    def running(self) -> int:
        return int(self._current is not None)

    def start(self) -> None:
        if self._threads is None:
            self._threads = current_threads()
        # daemon: a generation stuck in the model must not keep a stopping process alive.
        self._thread = threading.Thread(target=self._work, name="prefixkv-worker", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            if not self._accepting:
                raise RequestCancelled("the server is shutting down")
            self._queue.put(job)

    def drain(self) -> None:
        with self._lock:
            self._accepting = False
            drained = []
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    drained.append(job)
        for job in drained:
            job.cancel()
            job.finish("skipped", RequestCancelled("the server is shutting down"))

    def cancel_running(self) -> None:
        job = self._current
        if job is not None:
            job.cancel()

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._current is not None or self._queue.qsize():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self.drain()
        self.cancel_running()
        self._queue.put(None)
        thread.join(timeout)

    def _work(self) -> None:
        assert self._threads is not None
        compute_on(self._threads)
        while (job := self._queue.get()) is not None:
            self._current = job
            try:
                self._run(job)
            finally:
                self._current = None

    def _run(self, job: Job) -> None:
        if job.cancelled:
            job.finish("skipped", RequestCancelled("the request was cancelled while queued"))
            return
        stream = self._engine.run(job.request)
        try:
            for item in stream:
                if job.cancelled:  # checked once per token
                    job.finish("stopped", RequestCancelled("the request was cancelled"))
                    return
                job.deliver(item)  # a Completion is kept on the job
            job.finish("completed")
        except Exception as exc:
            report_failure(log, "generation failed", exc)
            job.finish("failed", exc)
        finally:
            stream.close()  # a stream closed early releases its cache lease


class BatchBackend:
    """Jobs go straight to a BatchRunner (``runner``: anything with its interface)."""

    def __init__(self, runner: Any, threads: int | None = None) -> None:
        """``threads``: the cores the runner's torch ops use (see :mod:`prefixkv.threads`)."""
        self.runner = runner
        self._threads = threads

    @property
    def waiting(self) -> int:
        return int(self.runner.num_waiting)

    @property
    def running(self) -> int:
        return int(self.runner.num_running)

    def start(self) -> None:
        self.runner.start(self._threads)

    def submit(self, job: Job) -> None:
        self.runner.submit(job.request, job)

    def drain(self) -> None:
        self.runner.drain()

    def cancel_running(self) -> None:
        self.runner.cancel_running()

    def wait_idle(self, timeout: float) -> bool:
        return bool(self.runner.wait_idle(timeout))

    def stop(self, timeout: float = 10.0) -> None:
        self.runner.stop(timeout)

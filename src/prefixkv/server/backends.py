"""RunnerBackend: the scheduler's jobs run on the engine's runner, off the event loop.

The runner is the serial one (one request at a time, in arrival order) or the batch one
(many together); each job is the Sink of its request, so the runner reports to it directly.
"""

from __future__ import annotations

from prefixkv.engine.role import Runner
from prefixkv.server.scheduler import Job


class RunnerBackend:
    """Jobs go straight to ``runner``."""

    def __init__(self, runner: Runner, threads: int | None = None) -> None:
        """``threads``: the cores the runner's torch ops use (see :mod:`prefixkv.threads`;
        default: those of the thread that calls ``start``)."""
        self.runner = runner
        self._threads = threads

    @property
    def waiting(self) -> int:
        return self.runner.num_waiting

    @property
    def running(self) -> int:
        return self.runner.num_running

    def start(self) -> None:
        self.runner.start(self._threads)

    def submit(self, job: Job) -> None:
        self.runner.submit(job.request, job)

    def drain(self) -> None:
        self.runner.drain()

    def cancel_running(self) -> None:
        self.runner.cancel_running()

    def wait_idle(self, timeout: float) -> bool:
        return self.runner.wait_idle(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        self.runner.stop(timeout)

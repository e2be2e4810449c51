"""Stopping the child processes benchmarks start (servers, routers, Redis): politely first,
then for sure."""

from __future__ import annotations

import subprocess


def stop_process(process: subprocess.Popen[bytes], grace: float) -> int:
    """SIGTERM ``process`` if it still runs, wait up to ``grace`` seconds, then SIGKILL it;
    return its exit status (negative: the signal that ended it)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)

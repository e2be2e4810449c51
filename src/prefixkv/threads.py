"""One thread computes on every core; every other thread runs its torch ops on one.

PyTorch's CPU ops run on OpenMP (libgomp on Linux), where each thread that starts parallel
work gets its own team of worker threads. Between parallel regions the workers spin for a
few milliseconds before sleeping, which is what makes a model's thousands of small ops per
step cheap, but libgomp cuts that spin to ~100 iterations once the process holds more OpenMP
threads than CPUs. A server whose main thread loaded the model with two threads and whose
runner thread computes with two more holds three on two CPUs, and every step pays futex
wake-ups (measured in ``docs/decisions.md``, "One OpenMP team"). So the thread that runs the model calls :func:`compute_on`, and every other thread
that may touch torch (the main thread before it loads the model, the tier writer, the
request preparation thread) calls :func:`helper_thread` first.

``torch.set_num_threads`` sets the calling thread's count and a process-wide default, which
each thread copies the first time it asks for its count (PyTorch initialises a thread's count
lazily). Each function here makes that first ask before setting, so a thread keeps its own
count whatever the others set later, and the order threads start in does not matter. A
thread that starts a helper calls :func:`current_threads` first, so that it too has its own
count before the helper's claim of one changes the default.
"""

from __future__ import annotations

import torch


def compute_on(threads: int) -> None:
    """Run the calling thread's torch ops on ``threads`` cores (the model's thread)."""
    _own(threads)


def current_threads() -> int:
    """The calling thread's count, fixed for it from now on (call before starting a helper
    thread, and to learn the count a thread started from this one should claim)."""
    return torch.get_num_threads()


def helper_thread() -> None:
    """Run the calling thread's torch ops on one core (any thread but the model's)."""
    _own(1)


def _own(threads: int) -> None:
    torch.get_num_threads()  # the thread copies the default now, not at its first op
    torch.set_num_threads(threads)

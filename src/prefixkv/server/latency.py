"""Recent latencies for live quantiles (the dashboard's TTFT p50/p99): Prometheus histograms
give quantiles only as bucket bounds, and only since start."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class LatencyWindow:
    """Recent latencies (seconds) with their time, for quantiles over the last ``span``
    seconds. Thread-safe: the scheduler's thread adds, the sampler reads. Holds at most
    ``limit`` entries (the oldest go first), so a burst cannot grow memory."""

    def __init__(
        self, span: float = 60.0, limit: int = 4096, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.span = span
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: deque[tuple[float, float]] = deque(maxlen=limit)

    def add(self, seconds: float) -> None:
        with self._lock:
            self._entries.append((self._clock(), seconds))

    def quantiles(self, qs: tuple[float, ...]) -> list[float | None]:
        """The ``qs`` quantiles (nearest rank) of the entries of the last ``span`` seconds,
        each None when there are none."""
        cutoff = self._clock() - self.span
        with self._lock:
            values = sorted(s for t, s in self._entries if t >= cutoff)
        if not values:
            return [None for _ in qs]
        return [values[min(len(values) - 1, max(0, round(q * len(values)) - 1))] for q in qs]

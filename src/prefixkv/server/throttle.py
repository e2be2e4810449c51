"""Throttle: at most one log line per kind per interval, so that no client can flood the log.

The first event of a kind is shown; later ones within ``interval`` seconds are counted, and
the next one shown says how many were left out. Kinds must come from a bounded set (status
codes, exception types, fixed messages): the throttle keeps one entry per kind.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable


class Throttle:
    """Thread-safe. ``__call__(kind)`` says whether to show this event, and how many events
    of the kind were left out since the last one shown."""

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic):
        self.interval, self.clock = interval, clock
        self._last: dict[Hashable, tuple[float, int]] = {}  # kind: (last shown, left out)
        self._lock = threading.Lock()

    def __call__(self, kind: Hashable) -> tuple[bool, int, float]:
        """``(show, left_out, since)``: show is False while the kind was shown less than
        ``interval`` seconds ago (the event is then counted); ``since`` is the seconds since
        the kind was last shown."""
        now = self.clock()
        with self._lock:
            shown, left_out = self._last.get(kind, (now - self.interval, 0))
            if now - shown < self.interval:
                self._last[kind] = (shown, left_out + 1)
                return False, 0, now - shown
            self._last[kind] = (now, 0)
            return True, left_out, now - shown

    def seen(self, kind: Hashable) -> bool:
        """True once an event of ``kind`` was shown."""
        with self._lock:
            return kind in self._last


FAILURES = Throttle()
"""The process-wide throttle of unexpected failures (bugs): see :func:`report_failure`."""


def report_failure(logger: logging.Logger, what: str, exc: BaseException) -> None:
    """Log an unexpected failure: the first of each exception type with its traceback, later
    ones as one line, at most one per type per interval with a count of the rest."""
    kind = type(exc).__qualname__
    first = not FAILURES.seen(kind)
    show, left_out, _ = FAILURES(kind)
    if show:
        more = f" ({left_out} more like it since)" if left_out else ""
        logger.error(
            "%s: %s: %s%s", what, kind, str(exc)[:200], more, exc_info=exc if first else None
        )

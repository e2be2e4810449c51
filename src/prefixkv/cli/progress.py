"""A progress bar on stderr for long CLI loops (tqdm is only in the ``[hf]`` extra, and
``prefixkv simulate`` needs no more than NumPy): redrawn at most every 0.2 s, on a
terminal only, so a redirected stderr gets no carriage-return noise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

WIDTH = 30


class Progress:
    """``advance(n)`` as work is done; ``close()`` ends the line."""

    def __init__(self, total: int, label: str, out: TextIO = sys.stderr) -> None:
        self.total = max(total, 1)
        self.label = label
        self.out = out
        self.done = 0
        self._shown = out.isatty()
        self._drawn = 0.0

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if self._shown and (now - self._drawn >= 0.2 or self.done >= self.total):
            self._drawn = now
            filled = WIDTH * min(self.done, self.total) // self.total
            bar = "#" * filled + "." * (WIDTH - filled)
            self.out.write(f"\r{self.label} [{bar}] {self.done}/{self.total}")
            self.out.flush()

    def close(self) -> None:
        if self._shown:
            self.out.write("\n")
            self.out.flush()

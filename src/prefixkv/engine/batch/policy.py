"""Admission policies: which waiting sequence joins the batch next.

Preempted sequences are always put back at the front of the queue and resume first, whatever
the policy (they already waited and hold generated tokens).
"""

from __future__ import annotations

import collections
from typing import Protocol

from prefixkv.cache.protocol import BlockStore
from prefixkv.engine.batch.sequence import Sequence

LPM_WINDOW = 64
"""``lpm`` ranks at most this many waiting sequences per admission (each costs an index
peek), so admitting stays O(window) whatever the queue's length."""


class AdmissionPolicy(Protocol):
    name: str

    def next(self, waiting: collections.deque[Sequence], store: BlockStore) -> Sequence:
        """Remove and return the sequence to admit next (``waiting`` is not empty)."""
        ...


class FirstCome:
    """First come, first served (the default)."""

    name = "fcfs"

    def next(self, waiting: collections.deque[Sequence], store: BlockStore) -> Sequence:
        return waiting.popleft()


class LongestPrefix:
    """The longest cached prefix first (SGLang's ``lpm``), among the first ``LPM_WINDOW``
    waiting; ties go to the earliest. A preempted sequence at the front goes first."""

    name = "lpm"

    def next(self, waiting: collections.deque[Sequence], store: BlockStore) -> Sequence:
        head = waiting[0]
        if head.cached_tokens >= 0:  # admitted before: a preempted sequence resumes first
            return waiting.popleft()
        window = [waiting[i] for i in range(min(LPM_WINDOW, len(waiting)))]
        best = max(
            range(len(window)),
            key=lambda i: (store.cached(window[i].lookup_bytes(), window[i].request.namespace), -i),
        )
        seq = window[best]
        del waiting[best]
        return seq


FCFS = FirstCome()
LPM = LongestPrefix()
POLICIES: dict[str, AdmissionPolicy] = {FCFS.name: FCFS, LPM.name: LPM}

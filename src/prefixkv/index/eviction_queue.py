"""The queue of evictable leaves, ordered by an :class:`~prefixkv.index.policy.EvictionPolicy`.

A binary heap with lazy deletion: ``update`` pushes a fresh entry and marks older entries of
the same node stale; ``pop`` skips stale entries. Each entry is pushed once and popped at most
once, and the heap is compacted whenever stale entries outnumber live ones, so ``update``,
``discard`` and ``pop`` cost O(log n) amortized for n evictable leaves. Nothing ever scans
or re-heapifies all leaves on an eviction.

Not thread-safe by itself: :class:`~prefixkv.index.tree.PrefixIndex` calls it under its lock.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator

from prefixkv.index.node import Node
from prefixkv.index.policy import EvictionPolicy


class EvictionQueue:
    """Evictable leaves (attached, unpinned, childless, non-root nodes) by priority."""

    def __init__(self, policy: EvictionPolicy) -> None:
        self.policy = policy
        # Entries are (priority, sequence, node); the sequence breaks ties without comparing
        # nodes and identifies the live entry of each node.
        self._heap: list[tuple[tuple[int, ...], int, Node]] = []
        self._live: dict[Node, int] = {}
        self._seq = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, node: Node) -> bool:
        return node in self._live

    def __iter__(self) -> Iterator[Node]:
        return iter(self._live)

    def update(self, node: Node) -> None:
        """Insert ``node`` or refresh its priority from its tail block. O(log n) amortized."""
        seq = next(self._seq)
        self._live[node] = seq
        heapq.heappush(self._heap, (self.policy.priority(node.tail_access()), seq, node))
        if len(self._heap) > 2 * len(self._live) + 64:
            self._compact()

    def discard(self, node: Node) -> None:
        """Remove ``node`` if present (its heap entry goes stale). O(1)."""
        self._live.pop(node, None)

    def peek(self) -> tuple[int, ...] | None:
        """The priority of the leaf ``pop`` would return, or None; drops stale entries on the
        way. O(log n) amortized."""
        heap, live = self._heap, self._live
        while heap:
            priority, seq, node = heap[0]
            if live.get(node) == seq:
                return priority
            heapq.heappop(heap)
        return None

    def pop(self) -> Node | None:
        """Remove and return the leaf to evict first, or None when there is none."""
        heap, live = self._heap, self._live
        while heap:
            _, seq, node = heapq.heappop(heap)
            if live.get(node) == seq:
                del live[node]
                return node
        return None

    def _compact(self) -> None:
        live = self._live
        self._heap = [entry for entry in self._heap if live.get(entry[2]) == entry[1]]
        heapq.heapify(self._heap)

    def check(self) -> None:
        """Raise AssertionError if a live node lacks its entry or has a stale priority."""
        entries = {seq: (prio, node) for prio, seq, node in self._heap}
        for node, seq in self._live.items():
            if seq not in entries or entries[seq][1] is not node:
                raise AssertionError(f"evictable leaf {node} has no heap entry")
            if entries[seq][0] != self.policy.priority(node.tail_access()):
                raise AssertionError(f"evictable leaf {node} has a stale priority")

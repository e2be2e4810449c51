"""Eviction policies: small strategy objects that say which leaf block goes first.

Every indexed block carries a :class:`BlockAccess` record: how many operations used it
(``hits``) and the logical clock tick of the latest one (``tick``). A match uses the blocks it
matched; an insert uses every block of its path. A policy maps that record to a priority: the
evictable leaf block with the smallest priority is evicted first. A policy also says what one
use adds to ``hits`` (``hit_step``): LRU ignores frequency, so it counts nothing, and blocks
last used together keep one shared record (one region per node, see ``node.py``) instead of
one per distinct count: a 128-turn conversation is one record under LRU, 128 under LFU.

Invariant the index relies on (true for any policy built from these records): along a chain
of blocks, ``hits`` and ``tick`` never increase from parent to child, because every operation
that uses a block also uses all of its ancestors. Distinct leaves never share a ``tick``: two
blocks last used by the same operation lie on its single path, so one is the other's ancestor.
Hence a policy that ends its priority with ``tick`` orders leaves totally and deterministically.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol


class BlockAccess(NamedTuple):
    """What the index knows about the use of one block."""

    hits: int
    """1 + ``hit_step`` per later operation (match or insert) that used the block."""
    tick: int
    """Logical clock of the latest such operation (unique per operation)."""


class EvictionPolicy(Protocol):
    """Orders evictable leaf blocks. Pure: never mutates anything, never raises."""

    name: str
    hit_step: int
    """What one use adds to a block's ``hits`` (0 when ``priority`` ignores hits)."""

    def priority(self, access: BlockAccess) -> tuple[int, ...]:
        """Smaller is evicted first. Must end with ``access.tick`` to break ties."""
        ...


class LRUPolicy:
    """Least recently used first."""

    name = "lru"
    hit_step = 0

    def priority(self, access: BlockAccess) -> tuple[int, ...]:
        return (access.tick,)


class LFUPolicy:
    """Least frequently used first; among equally used blocks, least recently used first."""

    name = "lfu"
    hit_step = 1

    def priority(self, access: BlockAccess) -> tuple[int, ...]:
        return (access.hits, access.tick)


def policy_by_name(name: str) -> EvictionPolicy:
    """``"lru"`` or ``"lfu"``; raises ``ValueError`` naming the choices otherwise."""
    policies: dict[str, EvictionPolicy] = {"lru": LRUPolicy(), "lfu": LFUPolicy()}
    try:
        return policies[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown eviction policy {name!r}; choose one of {sorted(policies)}"
        ) from None

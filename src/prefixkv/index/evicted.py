"""The eviction hook: who is told which blocks an index removed, with their tokens.

:class:`PrefixIndex` values are opaque and ``evict`` returns them only; an
:class:`EvictionObserver` given to the index also learns *which prefix* each removed run of
blocks ended, as its token bytes, so it can name the blocks (e.g. with the chained names of
:mod:`prefixkv.tiers.naming`) and remember or announce their removal. This is the one hook
for evictions: the cache's ring of recent evictions (:mod:`prefixkv.cache.evictions`) is an
observer, and so would be a feed of KV "removed" events.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import NamedTuple, Protocol


class EvictedRun(NamedTuple):
    """Blocks ``first_block .. first_block + num_blocks - 1`` of one cached prefix, removed
    together by one ``evict``."""

    namespace: Hashable
    tokens: bytes
    """Canonical token bytes of the prefix from its first block through the last removed
    block (``(first_block + num_blocks) * block_size`` tokens)."""
    first_block: int
    num_blocks: int


class EvictionObserver(Protocol):
    """Told of every run of blocks an index evicts, before ``evict`` returns.

    Called under the index's lock (and under the cache's, when a cache evicts): it must be
    quick, must not call back into the index, and must not raise."""

    def evicted(self, run: EvictedRun) -> None: ...

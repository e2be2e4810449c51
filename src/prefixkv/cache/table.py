"""BlockTable: the pool blocks holding one running sequence's KV, in token order.

A batching engine writes a running sequence's keys and values straight into pool blocks
instead of a private buffer. The table names those blocks; the cache that made it
(:meth:`~prefixkv.cache.paged.PrefixKVCache.open`) is the only one that changes it:

- ``blocks[:indexed]`` are indexed (shared with every other sequence and later request that
  matches them) and pinned through ``pin`` while the table is open, except any listed in
  ``private`` (a copy made while another sequence indexed the same tokens first);
- ``blocks[indexed:]`` are private: written by this sequence only, never read by another;
- ``private`` is what closing the table returns to the free list.

Invariant: an indexed block is never written again, so readers need no lock.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field

from prefixkv.index.records import Match


@dataclass(eq=False)
class BlockTable:
    """One running sequence's blocks. Mutable, owned by one thread (the batch runner); only
    the cache's ``grow``/``commit``/``close`` change it."""

    namespace: Hashable
    blocks: list[int]
    """Pool block ids in token order: token t lives in ``blocks[t // block_size]`` at
    offset ``t % block_size``."""
    cached_tokens: int
    """Tokens found cached when the table was opened (a multiple of the block size)."""
    indexed: int
    """How many leading blocks are indexed (matched at open, or committed since)."""
    pin: Match | None
    """The index path pinned for this table (None once closed, or for a cache that indexes
    nothing)."""
    private: set[int] = field(default_factory=set)

    def capacity(self, block_size: int) -> int:
        """Tokens the table can hold without growing."""
        return len(self.blocks) * block_size

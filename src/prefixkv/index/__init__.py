"""The prefix index: token prefixes to per-block values. Needs NumPy only, never torch.

- :mod:`.tree`: :class:`PrefixIndex`, the radix tree over blocks, assembled from
  :mod:`.state`, :mod:`.matching`, :mod:`.mutation`, :mod:`.removal` and :mod:`.pins`
- :mod:`.values`: how block values are kept (lists of anything, or int64 runs)
- :mod:`.descent`: the lookup of a query's longest indexed path (reading it lazily)
- :mod:`.node`: one node (a run of blocks) and its per-block use records
- :mod:`.records`: :class:`Match`, :class:`Inserted`, :class:`IndexStats`, :class:`StaleMatchError`
- :mod:`.policy`: eviction policies (LRU, LFU) as small strategy objects
- :mod:`.eviction_queue`: the lazy heap of evictable leaves
- :mod:`.check`: the full invariant check
- :mod:`.reference`: the plain-dict reference model the property tests compare against
"""

from prefixkv.index.policy import (
    BlockAccess,
    EvictionPolicy,
    LFUPolicy,
    LRUPolicy,
    policy_by_name,
)
from prefixkv.index.records import (
    IndexStats,
    Inserted,
    Match,
    PinnedBlocksError,
    StaleMatchError,
)
from prefixkv.index.tree import PrefixIndex
from prefixkv.index.values import INT64_VALUES, LIST_VALUES, ValueStore

__all__ = [
    "INT64_VALUES",
    "LIST_VALUES",
    "BlockAccess",
    "EvictionPolicy",
    "IndexStats",
    "Inserted",
    "LFUPolicy",
    "LRUPolicy",
    "Match",
    "PinnedBlocksError",
    "PrefixIndex",
    "StaleMatchError",
    "ValueStore",
    "policy_by_name",
]

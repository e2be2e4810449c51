"""PrefixIndex: token prefixes to per-block values, exact, bounded and thread-safe.

Structure: one radix tree of blocks per namespace (see :mod:`prefixkv.index.node`). Prefixes are
compared as raw token bytes, so a match is always verified token for token: there is no hash
whose collision could serve another prompt's blocks. Children are found with one dict lookup
keyed by their first block (``child_key``, the block bytes themselves by default).

What the operations read of their ``tokens`` (any form :mod:`prefixkv.tokens` accepts; see
``docs/design.md``): the container is checked first, in O(1); ids are converted and validated
front to back only as far as needed, and nothing changes before the reading is done. A
``match`` or ``peek`` that misses reads exactly the first block; ``insert`` reads (and so
validates) every block it stores; ids not read are not validated.

Costs, for a query of q tokens (b = q / block_size blocks) whose path crosses p nodes:
- ``match``: O(ids read) conversion and ``memcmp`` in C (a miss: O(block_size)), plus
  O(p + r) Python steps, where r is the number of use regions on the path (usually p; at most
  b). No scan over siblings.
- ``insert``: the same over the blocks it uses, plus O(new blocks) to copy labels and values.
- ``pin`` / ``unpin``: O(p) (the path is re-verified in O(b) only if blocks were evicted
  between ``match`` and ``pin``).
- ``evict(k)``: O((k + leaves touched) log n) amortized for n evictable leaves; never a scan or
  rebuild over all leaves.
Block values are kept by a value store chosen at construction (:mod:`.values`): lists of
any values by default, or int64 runs (``array('q')``). Every public method takes one
``threading.Lock``; any number of threads may call them.
"""

from __future__ import annotations

from collections.abc import Hashable

from prefixkv.index.check import check_index
from prefixkv.index.pins import Pinning
from prefixkv.index.records import IndexStats
from prefixkv.index.state import ChildKey
from prefixkv.index.values import Run

__all__ = ["ChildKey", "PrefixIndex"]


class PrefixIndex(Pinning):
    """Maps the full blocks of token sequences to opaque values (e.g. KV block ids).

    Made as ``PrefixIndex(block_size=16, *, policy=None, child_key=..., clock=None,
    on_evict=None, native=None, values=LIST_VALUES)``:

    - ``policy``: the eviction order (:mod:`.policy`; LRU by default);
    - ``child_key`` maps a block's bytes to the dict key used to find it among its
      siblings. The default (the bytes themselves) is injective; a non-injective one only
      costs hit rate, never correctness, because every match compares the full block bytes;
    - ``clock``: the ticks of use records (indexes sharing one compare their records);
    - ``on_evict``: told of every run of blocks ``evict`` removes, with its tokens
      (:mod:`.evicted`);
    - ``native``: the descent that reads 8-byte token arrays (``array('q')``) in place
      (:mod:`.native`), used by ``match``, ``peek`` and the inserts for such arrays; the
      same results as without;
    - ``values``: how block values are kept (:mod:`.values`): ``LIST_VALUES`` (any values;
      a match's values are a tuple) or ``INT64_VALUES`` (8-byte integers packed in
      ``array('q')`` runs; a match's values are an ``array('q')``, and ``insert``,
      ``evict`` and ``discard`` return ``array('q')``).

    The operations are spread over one module per concept: :mod:`.matching`,
    :mod:`.mutation`, :mod:`.removal`, :mod:`.pins`; this module adds introspection.
    """

    def __len__(self) -> int:
        return self._num_blocks

    @property
    def evictable_blocks(self) -> int:
        """Blocks that ``evict`` could remove now: every unpinned block."""
        return self._num_blocks - self._pinned_blocks

    @property
    def pinned_blocks(self) -> int:
        return self._pinned_blocks

    @property
    def num_nodes(self) -> int:
        """Tree nodes holding blocks (roots excluded): bounded by ``len(self)``."""
        return self._num_nodes

    def indexed_values(self) -> Run:
        """Every indexed value (any order, a run of the value store). O(total blocks); for
        checks and diagnostics."""
        with self._lock:
            out = self._store.empty()
            stack = list(self._roots.values())
            while stack:
                node = stack.pop()
                out.extend(node.values)
                stack.extend(node.children.values())
            return out

    def stats(self) -> IndexStats:
        with self._lock:
            return IndexStats(
                queries=self._queries,
                query_tokens=self._query_tokens,
                hit_tokens=self._hit_tokens,
                full_hits=self._full_hits,
                partial_hits=self._partial_hits,
                misses=self._misses,
                inserted_blocks=self._inserted_blocks,
                evicted_blocks=self._evicted_blocks,
            )

    def check_invariants(self) -> None:
        """Raise AssertionError naming the first broken invariant. O(total blocks)."""
        with self._lock:
            check_index(self)

    def namespaces(self) -> list[Hashable]:
        """The namespaces holding at least one block. O(namespaces)."""
        with self._lock:
            return list(self._roots)

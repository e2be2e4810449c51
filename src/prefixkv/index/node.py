"""One node of the prefix tree: a run of consecutive blocks with a single parent.

The tree is a radix tree over *blocks*: a node holds ``n >= 1`` consecutive full blocks (its
``label``, ``n * block_token_bytes`` bytes of token ids) and one value per block (its ``values``, a run of the index's value store, see
:mod:`prefixkv.index.values`). A root holds no
blocks. Children are keyed by (a function of) their first block, so finding the child that
continues a prefix is one dict lookup, whatever the number of siblings.

Per-block use records are kept as *regions*: maximal runs of blocks that share one
:class:`~prefixkv.index.policy.BlockAccess`. Because every operation that uses a block also uses
its ancestors, ``hits`` and ``tick`` never increase from head to tail, so a node needs only a
few regions and a full pass over it is O(regions), usually O(1).

This module owns the per-node mechanics only; :mod:`prefixkv.index.tree` owns the tree.
"""

from __future__ import annotations

from collections.abc import Hashable

from prefixkv.index.policy import BlockAccess
from prefixkv.index.values import Run

_new = tuple.__new__  # builds a NamedTuple from its fields without its Python-level __new__


class Region:
    """Blocks ``[previous region's end, end)`` of a node, all with the same use record."""

    __slots__ = ("end", "hits", "tick")

    def __init__(self, end: int, hits: int, tick: int) -> None:
        self.end = end
        self.hits = hits
        self.tick = tick

    def __repr__(self) -> str:
        return f"Region(end={self.end}, hits={self.hits}, tick={self.tick})"


class Node:
    """A tree node. Mutated only by :class:`~prefixkv.index.tree.PrefixIndex` under its lock.

    Invariants (checked by ``PrefixIndex.check_invariants``):
    - ``len(label) == len(values) * block_token_bytes``; a non-root node has at least one block;
    - ``depth`` is the absolute index of the node's first block in its prefix;
    - ``regions`` cover ``[0, len(values))`` with strictly increasing ends, and neither
      ``hits`` nor ``tick`` increases from one region to the next;
    - ``pin_count`` counts the pins whose path runs through this node;
    - ``attached`` is False once the node has been removed from the tree.
    """

    __slots__ = (
        "attached",
        "children",
        "depth",
        "key",
        "label",
        "parent",
        "pin_count",
        "regions",
        "values",
    )

    def __init__(
        self,
        parent: Node | None,
        key: Hashable,
        label: bytearray,
        values: Run,
        depth: int,
        regions: list[Region],
    ) -> None:
        self.parent = parent
        self.key = key
        self.children: dict[Hashable, Node] = {}
        self.label = label
        self.values = values
        self.depth = depth
        self.regions = regions
        self.pin_count = 0
        self.attached = True

    def __repr__(self) -> str:
        return (
            f"Node(depth={self.depth}, blocks={len(self.values)}, children={len(self.children)},"
            f" pin_count={self.pin_count})"
        )

    # --- use records -------------------------------------------------------------------------

    def tail_access(self) -> BlockAccess:
        """Use record of the last block: the one eviction would take first."""
        last = self.regions[-1]
        return _new(BlockAccess, (last.hits, last.tick))  # (in C: once per queue update)

    def use_all(self, tick: int, hit_step: int) -> None:
        """Record one use of every block. O(regions)."""
        for region in self.regions:
            region.hits += hit_step
            region.tick = tick
        self._merge()

    def use_prefix(self, num_blocks: int, tick: int, hit_step: int) -> None:
        """Record one use of the first ``num_blocks`` blocks (0 < num_blocks <= len).
        O(regions up to block ``num_blocks``): usually one, on a repeated partial match."""
        regions = self.regions
        last = 0  # the region holding block num_blocks - 1
        while regions[last].end < num_blocks:
            last += 1
        region = regions[last]
        if region.end > num_blocks:  # the prefix ends inside it: cut it there
            regions.insert(last + 1, Region(region.end, region.hits, region.tick))
            region.end = num_blocks
        for region in regions[: last + 1]:
            region.hits += hit_step
            region.tick = tick
        if last:  # the used regions now share a tick; those with equal hits merge
            self._merge()

    def extend(self, label: bytes | memoryview, values: Run, tick: int) -> None:
        """Append blocks first used at ``tick`` (the caller has already used the rest)."""
        self.label += label
        self.values.extend(values)
        self.regions.append(Region(len(self.values), 1, tick))
        self._merge()

    def truncate(self, num_blocks: int, block_token_bytes: int) -> Run:
        """Keep the first ``num_blocks`` blocks; return the removed values, deepest first."""
        removed = self.values[num_blocks:]
        removed.reverse()
        del self.values[num_blocks:]
        del self.label[num_blocks * block_token_bytes :]
        regions = self.regions
        while len(regions) > 1 and regions[-2].end >= num_blocks:
            regions.pop()
        regions[-1].end = num_blocks
        if num_blocks == 0:
            regions.clear()
        return removed

    def split_regions(self, num_blocks: int) -> list[Region]:
        """Split the regions at ``num_blocks``; return the head's, keep the tail's (rebased)."""
        self._cut(num_blocks)
        cut = next(i for i, r in enumerate(self.regions) if r.end == num_blocks)
        head = self.regions[: cut + 1]
        tail = self.regions[cut + 1 :]
        for region in tail:
            region.end -= num_blocks
        self.regions = tail
        return head

    def _cut(self, num_blocks: int) -> None:
        """Make ``num_blocks`` a region boundary (0 < num_blocks <= len)."""
        start = 0
        for i, region in enumerate(self.regions):
            if region.end == num_blocks:
                return
            if start < num_blocks < region.end:
                self.regions.insert(i, Region(num_blocks, region.hits, region.tick))
                return
            start = region.end

    def _merge(self) -> None:
        regions = self.regions
        i = len(regions) - 1
        while i > 0:
            prev, cur = regions[i - 1], regions[i]
            if prev.hits == cur.hits and prev.tick == cur.tick:
                prev.end = cur.end
                del regions[i]
            i -= 1

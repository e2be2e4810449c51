"""Removal: ``evict`` (the policy picks), ``discard`` (the caller picks a subtree) and the
unlinking they share, for :class:`~prefixkv.index.tree.PrefixIndex`.

Eviction takes the evictable leaf block (unpinned, nothing below it) with the smallest
policy priority, from the lazy heap (:mod:`.eviction_queue`): O(log n) per removed run.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from prefixkv.index.evicted import EvictedRun
from prefixkv.index.mutation import Mutation
from prefixkv.index.node import Node
from prefixkv.index.records import PinnedBlocksError
from prefixkv.index.values import Run
from prefixkv.tokens import TokenReader


class Removal(Mutation):
    """The removals of the index (see :class:`~prefixkv.index.tree.PrefixIndex`)."""

    def evict(self, num_blocks: int) -> Run:
        """Remove up to ``num_blocks`` unpinned blocks and return their values (a run of the
        index's value store), in order.

        Each step removes the evictable leaf block (no indexed block extends it, not pinned)
        with the smallest policy priority; parents become leaves as their last child goes.
        Removed nodes are unlinked and their storage reclaimed.
        """
        if not isinstance(num_blocks, int) or num_blocks < 0:
            raise ValueError(f"num_blocks must be a non-negative integer, got {num_blocks!r}")
        out = self._store.empty()
        with self._lock:
            while len(out) < num_blocks:
                node = self._queue.pop()
                if node is None:
                    break
                run_start = node.regions[-2].end if len(node.regions) > 1 else 0
                keep = max(run_start, len(node.values) - (num_blocks - len(out)))
                if self._on_evict is not None:
                    self._on_evict.evicted(self._run_of(node, keep))
                out.extend(node.truncate(keep, self._block_token_bytes))
                if keep:
                    self._queue.update(node)
                else:
                    self._remove(node)
            if out:
                self._num_blocks -= len(out)
                self._evicted_blocks += len(out)
                self._epoch += 1
        return out

    def _run_of(self, node: Node, keep: int) -> EvictedRun:
        """The run ``evict`` removes from ``node`` (its blocks from ``keep``), with the
        tokens of the whole path to it. O(path bytes)."""
        labels = [node.label]
        parent = node.parent
        while parent is not None and parent.parent is not None:
            labels.append(parent.label)
            parent = parent.parent
        assert parent is not None  # a namespace root: its key is the namespace
        tokens = b"".join(reversed(labels))
        return EvictedRun(parent.key, tokens, node.depth + keep, len(node.values) - keep)

    def discard(
        self, tokens: Sequence[int] | Any, first_block: int, namespace: Hashable = None
    ) -> Run:
        """Remove block ``first_block`` of the indexed prefix of ``tokens`` in ``namespace``,
        every later block of that prefix and every block extending them (a subtree: no
        block stays cached without its parent); return their values, any order. Blocks
        before ``first_block`` stay. For blocks known bad (the exactness canary): unlike
        ``evict``, it picks what to remove, not the policy. Returns no values when fewer blocks are
        indexed. Raises PinnedBlocksError, removing nothing, when any of them is pinned (a
        running sequence reads them: try again once it closes). O(ids read + blocks removed).
        """
        if not isinstance(first_block, int) or first_block < 0:
            raise ValueError(f"first_block must be a non-negative integer, got {first_block!r}")
        reader = TokenReader(tokens, self.block_size)
        with self._lock:
            match, path, _ = self._find(reader, namespace)
            if match.num_blocks <= first_block:
                return self._store.empty()
            node = next(n for n in path if n.depth + len(n.values) > first_block)
            if node.pin_count:
                raise PinnedBlocksError(f"block {first_block} of this prefix is pinned")
            if first_block > node.depth:  # keep the good head; the node object keeps the tail
                self._split(node, first_block - node.depth)
            removed = self._cut(node)
            self._num_blocks -= len(removed)
            self._evicted_blocks += len(removed)
            self._epoch += 1
            return removed

    def _cut(self, top: Node) -> Run:
        """Unlink ``top`` (unpinned) and its whole subtree; return their values."""
        out = self._store.empty()
        stack = [top]
        while stack:
            node = stack.pop()
            if self._on_evict is not None:  # (its path is still linked: name it first)
                self._on_evict.evicted(self._run_of(node, 0))
            out.extend(node.values)
            stack.extend(node.children.values())
            self._queue.discard(node)
            if node is not top:
                node.parent, node.attached = None, False
                self._num_nodes -= 1
        self._remove(top)
        return out

    def next_eviction(self) -> tuple[int, ...] | None:
        """The policy priority of the block ``evict(1)`` would take now, or None when no
        block is evictable. Amortized O(log n)."""
        with self._lock:
            return self._queue.peek()

    def _remove(self, node: Node) -> None:
        parent = node.parent
        assert parent is not None
        del parent.children[node.key]
        node.parent, node.attached = None, False
        self._num_nodes -= 1
        if parent.parent is None:  # a namespace root
            if not parent.children:
                del self._roots[parent.key]
                parent.attached = False
        elif not parent.children and parent.pin_count == 0:
            self._queue.update(parent)

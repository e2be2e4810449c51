"""Mutation: how :class:`~prefixkv.index.tree.PrefixIndex` places blocks (``insert``,
``insert_with_match``): extending an unpinned leaf in place, adding a child, or splitting a
node (the original node object keeps the tail, so earlier matches and pins stay valid).
"""

from __future__ import annotations

import array
from collections.abc import Hashable, Sequence
from typing import Any

from prefixkv.index.descent import common_blocks
from prefixkv.index.matching import Matching
from prefixkv.index.native import TYPECODES
from prefixkv.index.node import Node, Region
from prefixkv.index.records import Inserted
from prefixkv.index.state import new_record
from prefixkv.index.values import Run
from prefixkv.tokens import TokenReader

_new = new_record
_ARRAY = array.array


class Mutation(Matching):
    """The inserts of the index (see :class:`~prefixkv.index.tree.PrefixIndex`)."""

    def insert(
        self, tokens: Sequence[int] | Any, values: Sequence[Any], namespace: Hashable = None
    ) -> Run:
        """Index ``values[i]`` under the i-th full block of ``tokens``.

        Uses at most ``len(values)`` leading blocks. Blocks already indexed keep their value;
        the given values that were not adopted (already indexed, or a sibling key collision
        under a non-injective ``child_key``) are returned in block order, for the caller to
        free (a run of the index's value store). Records one use of every block on the path. Reads and validates the first block
        and every block it uses (module docstring); raises TypeError/ValueError before
        mutating anything.
        """
        values, num, query = self._insert_input(tokens, values)
        with self._lock:
            return self._place_new(namespace, query, values, num)[0]

    def insert_with_match(
        self, tokens: Sequence[int] | Any, values: Sequence[Any], namespace: Hashable = None
    ) -> Inserted:
        """``insert``, also returning the Match of the inserted blocks: what
        ``peek(tokens[:len(values) * block_size], namespace)`` would return right after it,
        taken from the insert's own path under the same lock (no second descent). The match
        counts no query. Costs O(inserted blocks) more than ``insert`` (the match's values)."""
        values, num, query = self._insert_input(tokens, values)
        with self._lock:
            rejected, path, used = self._place_new(namespace, query, values, num)
            if not path:
                return _new(Inserted, (rejected, self._empty_match(namespace)))
            return _new(Inserted, (rejected, self._match_of(path, used, query, namespace)))

    def _insert_input(
        self, tokens: Sequence[int] | Any, values: Sequence[Any]
    ) -> tuple[Run, int, bytes | memoryview]:
        """Insert's reading, before the lock: the values as a run of the store, the number of blocks to
        place and their query bytes (raises TypeError/ValueError for a malformed input)."""
        if self._native is not None and type(tokens) is _ARRAY and tokens.typecode in TYPECODES:
            run = self._store.adopt(values)
            size = self.block_size
            num = min(len(tokens) // size, len(run))  # (reads what TokenReader would)
            read = self._native.read(tokens, max(min(size, len(tokens)), num * size))
            return run, num, memoryview(read)  # (its slices: views, not copies)
        reader = TokenReader(tokens, self.block_size)
        run = self._store.adopt(values)  # (only sliced, never changed: no copy needed)
        num = min(reader.num_tokens // self.block_size, len(run))
        return run, num, reader.read_to(num * self.block_size)

    def _place_new(
        self, namespace: Hashable, query: bytes | memoryview, values: Run, num: int
    ) -> tuple[Run, list[Node], int]:
        """Under the lock: a new tick, the namespace's root made if needed, then ``_place``."""
        self._tick = next(self._clock)
        root = self._roots.get(namespace)
        if root is None:
            if num == 0:
                return self._store.empty(), [], 0
            root = Node(None, namespace, bytearray(), self._store.empty(), 0, [])
            self._roots[namespace] = root
        return self._place(root, query, values, num)

    def _place(
        self, node: Node, query: bytes | memoryview, values: Run, num: int
    ) -> tuple[Run, list[Node], int]:
        """Insert's work under the lock: index the first ``num`` blocks of ``query`` (all read)
        below ``node``; return the values not adopted, the path now holding the placed
        blocks and the blocks of its last node on it (as ``descend``)."""
        bb, key, tick = self._block_token_bytes, self._child_key, self._tick
        end = num * bb
        rejected = self._store.empty()
        path: list[Node] = []
        used = pos = block = 0
        while pos < end:
            first = key(bytes(query[pos : pos + bb]))
            child = node.children.get(first)
            if child is None:
                node = self._add_blocks(node, first, query[pos:end], values[block:num], tick)
                if not path or path[-1] is not node:  # (a leaf extended in place is last)
                    path.append(node)
                return rejected, path, len(node.values)
            common = common_blocks(child.label, query, pos, end, bb)
            if common == 0:  # sibling key collision: cannot place the rest
                rejected.extend(values[block:num])
                break
            rejected.extend(values[block : block + common])
            pos, block, used = pos + common * bb, block + common, common
            if common == len(child.values):
                self._use_all(child, tick)
            elif pos == end:
                child.use_prefix(common, tick, self._hit_step)
            else:
                child = self._split(child, common)
                self._use_all(child, tick)
            path.append(child)
            node = child
        return rejected, path, used

    def _add_blocks(
        self, node: Node, key: Hashable, label: bytes | memoryview, values: Run, tick: int
    ) -> Node:
        """Append new blocks below ``node``: in place if it is an unpinned leaf, else a child
        filed under ``key`` (the child key of the label's first block). Returns the node now
        holding them."""
        self._num_blocks += len(values)
        self._inserted_blocks += len(values)
        if node.parent is not None and not node.children and node.pin_count == 0:
            node.extend(label, values, tick)
            self._queue.update(node)
            return node
        child = Node(
            node,
            key,
            bytearray(label),
            values,
            node.depth + len(node.values),
            [Region(len(values), 1, tick)],
        )
        node.children[child.key] = child
        self._num_nodes += 1
        self._queue.discard(node)
        self._queue.update(child)
        return child

    def _split(self, node: Node, num_blocks: int) -> Node:
        """Split ``node`` after ``num_blocks`` blocks; return the new head (the original node
        object keeps the tail, so match handles and held pins that point at it stay valid)."""
        parent = node.parent
        assert parent is not None
        cut = num_blocks * self._block_token_bytes
        head = Node(
            parent,
            node.key,
            node.label[:cut],
            node.values[:num_blocks],
            node.depth,
            node.split_regions(num_blocks),
        )
        head.pin_count = node.pin_count  # every pin through the tail also runs through the head
        del node.label[:cut]
        del node.values[:num_blocks]
        node.depth += num_blocks
        node.key = self._child_key(bytes(node.label[: self._block_token_bytes]))
        node.parent = head
        head.children[node.key] = node
        parent.children[head.key] = head
        self._num_nodes += 1
        return head

"""Matching: the read side of :class:`~prefixkv.index.tree.PrefixIndex` (``match``, ``peek``,
``probe``, ``deepest_elsewhere``) and the records a match leaves (use of its blocks, stats).

Nothing here changes which blocks are indexed (module docstring of :mod:`.tree`).
"""

from __future__ import annotations

import array
from collections.abc import Hashable, Sequence
from typing import Any

from prefixkv.index.descent import descend
from prefixkv.index.native import TYPECODES, NativeDescent
from prefixkv.index.node import Node
from prefixkv.index.probe import Probe, nearest_continuation
from prefixkv.index.records import Match, MatchHandle
from prefixkv.index.state import IndexState, new_record
from prefixkv.tokens import TOKEN_BYTES, TokenReader

_new = new_record
_ARRAY = array.array


class Matching(IndexState):
    """The queries of the index (see :class:`~prefixkv.index.tree.PrefixIndex`)."""

    def match(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> Match:
        """Return the longest indexed prefix of ``tokens`` (whole blocks) in ``namespace``.

        Records one use of every matched block (recency/frequency for eviction) and counts the
        query in ``stats()``; never changes which blocks are indexed. Reads ``tokens`` lazily
        (module docstring): a miss reads and validates the first block only. Raises TypeError
        or ValueError for a malformed container or a malformed id among those read, before
        recording anything.
        """
        if self._native is not None and type(tokens) is _ARRAY and tokens.typecode in TYPECODES:
            with self._lock:  # (the native descent reads the ids under the lock)
                match, path, used = self._find_native(self._native, tokens, namespace)
                return self._record(match, path, used, len(tokens))
        reader = TokenReader(tokens, self.block_size)
        with self._lock:
            match, path, used = self._find(reader, namespace)
            return self._record(match, path, used, reader.num_tokens)

    def _record(self, match: Match, path: list[Node], used: int, num_tokens: int) -> Match:
        """Under the lock: a match's use of its blocks and its counts in ``stats()``."""
        self._tick = next(self._clock)
        if path:
            tick = self._tick
            for node in path[:-1]:
                self._use_all(node, tick)
            last = path[-1]
            if used == len(last.values):
                self._use_all(last, tick)
            else:
                last.use_prefix(used, tick, self._hit_step)
        self._queries += 1
        self._query_tokens += num_tokens
        if match.num_tokens == 0:
            self._misses += 1
        else:
            self._hit_tokens += match.num_tokens
            if match.num_tokens + self.block_size > num_tokens:  # every full block
                self._full_hits += 1
            else:
                self._partial_hits += 1
        return match

    def peek(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> Match:
        """Like ``match`` but read-only: records no use and counts no query.

        For callers that inspect the cache without being a request (``store``, diagnostics).
        Reads ``tokens`` exactly as ``match`` does.
        """
        if self._native is not None and type(tokens) is _ARRAY and tokens.typecode in TYPECODES:
            with self._lock:
                return self._find_native(self._native, tokens, namespace)[0]
        reader = TokenReader(tokens, self.block_size)
        with self._lock:
            return self._find(reader, namespace)[0]

    def probe(
        self, tokens: Sequence[int] | Any, namespace: Hashable = None, window: int = 0
    ) -> Probe:
        """Where ``tokens`` leave ``namespace``'s cached blocks: read-only like ``peek``,
        plus the nearest cached continuation after the matched blocks and up to ``window``
        of its tokens (at least a block's). See :mod:`prefixkv.index.probe` for the cost."""
        reader = TokenReader(tokens, self.block_size)
        with self._lock:
            match, path, used = self._find(reader, namespace)
            blocks, bb = match.num_blocks, self._block_token_bytes
            query = reader.read_to((blocks + 1) * self.block_size)
            labels = self._continuations(namespace, path, used, max(window * TOKEN_BYTES, bb))
            shared, cached = nearest_continuation(labels, query[blocks * bb : (blocks + 1) * bb])
            return Probe(blocks, blocks * self.block_size + shared, bool(labels), cached)

    def _continuations(
        self, namespace: Hashable, path: list[Node], used: int, size: int
    ) -> list[bytes]:
        """The first ``size`` bytes of each cached continuation after the matched blocks:
        the rest of the path's last node, else each child of it (of the root when nothing
        matched)."""
        if path and used < len(path[-1].values):
            start = used * self._block_token_bytes
            return [bytes(path[-1].label[start : start + size])]
        node = path[-1] if path else self._roots.get(namespace)
        if node is None:
            return []
        return [bytes(child.label[:size]) for child in node.children.values()]

    def deepest_elsewhere(
        self, tokens: Sequence[int] | Any, namespace: Hashable = None, enough: int = 0
    ) -> Match | None:
        """The longest match of ``tokens`` in any namespace of this index but
        ``namespace`` (None when no other namespace caches its first block), or, given
        ``enough``, the first one found of at least ``enough`` blocks. Read-only like
        ``peek``. One dict lookup per other namespace (the query's first block is keyed
        once), plus a descent in each that caches that block."""
        reader = TokenReader(tokens, self.block_size)
        bb = self._block_token_bytes
        end = reader.num_tokens // self.block_size * bb
        if not end:
            return None
        key = self._child_key(bytes(reader.view[:bb]))
        best: tuple[int, list[Node], int, Hashable] | None = None
        with self._lock:
            for other, root in self._roots.items():
                child = root.children.get(key)
                if child is None or other == namespace:
                    continue
                path, used = descend(child, reader, end, bb, self._child_key)
                blocks = path[-1].depth + used if path else 0
                if blocks and (best is None or blocks > best[0]):
                    best = (blocks, path, used, other)
                    if enough and blocks >= enough:
                        break
            if best is None:
                return None
            return self._match_of(best[1], best[2], reader.view, best[3])

    def _find(self, reader: TokenReader, namespace: Hashable) -> tuple[Match, list[Node], int]:
        """The match for ``reader``'s full blocks, its path, and the blocks used in the path's
        last node. Reads ``reader`` as far as the descent needs (a miss at the root: nothing
        past the first block, which ``reader`` holds)."""
        end = reader.num_tokens // self.block_size * self._block_token_bytes
        root = self._roots.get(namespace)
        if root is not None and end:
            first = bytes(reader.view[: self._block_token_bytes])
            child = root.children.get(self._child_key(first))
            if child is not None:
                path, used = descend(child, reader, end, self._block_token_bytes, self._child_key)
                if path:
                    return self._match_of(path, used, reader.view, namespace), path, used
        return self._empty_match(namespace), [], 0

    def _find_native(
        self, native: NativeDescent, ids: array.array[int], namespace: Hashable
    ) -> tuple[Match, list[Node], int]:
        """``_find`` for 8-byte ids, by the native descent (the same result and errors)."""
        root = self._roots.get(namespace)
        path, used, view = native.find(root, ids, self.block_size, self._native_key)
        if path:
            return self._match_of(path, used, view, namespace), path, used
        return self._empty_match(namespace), [], 0

    def _match_of(
        self, path: list[Node], used: int, query: bytes | memoryview, namespace: Hashable
    ) -> Match:
        """The Match for a non-empty path whose last node is used up to block ``used``."""
        # (one node, the common case, without a comprehension: a function call in 3.11)
        runs = [path[0].values] if len(path) == 1 else [node.values for node in path]
        values = self._store.matched(runs, used)
        handle = _new(MatchHandle, (self, path[-1], self._epoch, query))
        return _new(Match, (len(values) * self.block_size, values, namespace, handle))

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
Every public method takes one ``threading.Lock``; any number of threads may call them.
"""

from __future__ import annotations

import array
import itertools
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

from prefixkv.index.check import check_index
from prefixkv.index.descent import common_blocks, descend
from prefixkv.index.evicted import EvictedRun, EvictionObserver
from prefixkv.index.eviction_queue import EvictionQueue
from prefixkv.index.native import TYPECODES, NativeDescent
from prefixkv.index.node import Node, Region
from prefixkv.index.policy import EvictionPolicy, LRUPolicy
from prefixkv.index.probe import Probe, nearest_continuation
from prefixkv.index.records import (
    IndexStats,
    Inserted,
    Match,
    MatchHandle,
    PinnedBlocksError,
    StaleMatchError,
)
from prefixkv.tokens import TOKEN_BYTES, TokenBytes, TokenReader

ChildKey = Callable[[bytes], Hashable]

# Builds a NamedTuple from a tuple of its fields in C: a NamedTuple's own __new__ is a Python
# function, a noticeable share of a 2 us match.
_new = tuple.__new__
_ARRAY = array.array


def _same_bytes(block: bytes) -> Hashable:
    return block


class PrefixIndex:
    """Maps the full blocks of token sequences to opaque values (e.g. KV block ids).

    ``child_key`` maps a block's bytes to the dict key used to find it among its siblings. The
    default (the bytes themselves) is injective; a non-injective one only costs hit rate,
    never correctness, because every match compares the full block bytes.
    """

    def __init__(
        self,
        block_size: int = 16,
        *,
        policy: EvictionPolicy | None = None,
        child_key: ChildKey = _same_bytes,
        clock: Iterator[int] | None = None,
        on_evict: EvictionObserver | None = None,
        native: NativeDescent | None = None,
    ) -> None:
        """``on_evict``: told of every run of blocks ``evict`` removes, with its tokens
        (see :mod:`prefixkv.index.evicted`). ``native``: the descent that reads 8-byte
        token arrays (``array('q')``) in place (:mod:`prefixkv.index.native`), used by
        ``match``, ``peek`` and the inserts for such arrays; the same results as without."""
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
        self.block_size = block_size
        self._block_token_bytes = block_size * TOKEN_BYTES  # bytes of one block's token ids
        self._child_key = child_key
        self._native = native
        self._native_key = None if child_key is _same_bytes else child_key  # (None: in C)
        self._queue = EvictionQueue(policy or LRUPolicy())
        self._hit_step = self._queue.policy.hit_step
        self._roots: dict[Hashable, Node] = {}
        self._lock = threading.Lock()
        self._on_evict = on_evict
        # Ticks: one per operation, increasing. Indexes sharing a clock (one per tenant of a
        # cache) have comparable use records; ``_tick`` is this index's latest.
        self._clock = clock if clock is not None else itertools.count(1)
        self._tick = 0
        self._epoch = 0  # bumped whenever blocks are removed; lets pin() skip re-verification
        self._num_blocks = 0
        self._num_nodes = 0
        self._pinned_blocks = 0
        self._held: dict[int, tuple[Match, list[Node | None]]] = {}  # by id(match)
        # The IndexStats counters, as plain attributes (cheaper than a dict on every match).
        self._queries = self._query_tokens = self._hit_tokens = 0
        self._full_hits = self._partial_hits = self._misses = 0
        self._inserted_blocks = self._evicted_blocks = 0
        self._no_blocks = MatchHandle(self, None, 0, memoryview(b""))  # of every empty match

    @property
    def policy(self) -> EvictionPolicy:
        return self._queue.policy

    # --- queries ---------------------------------------------------------------------------

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

    def namespaces(self) -> list[Hashable]:
        """The namespaces holding at least one block. O(namespaces)."""
        with self._lock:
            return list(self._roots)

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
        return _new(Match, (0, (), namespace, self._no_blocks)), [], 0

    def _find_native(
        self, native: NativeDescent, ids: array.array[int], namespace: Hashable
    ) -> tuple[Match, list[Node], int]:
        """``_find`` for 8-byte ids, by the native descent (the same result and errors)."""
        root = self._roots.get(namespace)
        path, used, view = native.find(root, ids, self.block_size, self._native_key)
        if path:
            return self._match_of(path, used, view, namespace), path, used
        return _new(Match, (0, (), namespace, self._no_blocks)), [], 0

    def _match_of(
        self, path: list[Node], used: int, query: bytes | memoryview, namespace: Hashable
    ) -> Match:
        """The Match for a non-empty path whose last node is used up to block ``used``."""
        last = path[-1].values
        if len(path) == 1:
            values = tuple(last) if used == len(last) else tuple(last[:used])
        else:
            gathered: list[Any] = []
            for node in path[:-1]:
                gathered += node.values
            gathered += last if used == len(last) else last[:used]
            values = tuple(gathered)
        handle = _new(MatchHandle, (self, path[-1], self._epoch, query))
        return _new(Match, (len(values) * self.block_size, values, namespace, handle))

    # --- mutation --------------------------------------------------------------------------

    def insert(
        self, tokens: Sequence[int] | Any, values: Sequence[Any], namespace: Hashable = None
    ) -> list[Any]:
        """Index ``values[i]`` under the i-th full block of ``tokens``.

        Uses at most ``len(values)`` leading blocks. Blocks already indexed keep their value;
        the given values that were not adopted (already indexed, or a sibling key collision
        under a non-injective ``child_key``) are returned in block order, for the caller to
        free. Records one use of every block on the path. Reads and validates the first block
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
                return _new(Inserted, (rejected, _new(Match, (0, (), namespace, self._no_blocks))))
            return _new(Inserted, (rejected, self._match_of(path, used, query, namespace)))

    def _insert_input(
        self, tokens: Sequence[int] | Any, values: Sequence[Any]
    ) -> tuple[list[Any], int, bytes | memoryview]:
        """Insert's reading, before the lock: the values as a list, the number of blocks to
        place and their query bytes (raises TypeError/ValueError for a malformed input)."""
        if self._native is not None and type(tokens) is _ARRAY and tokens.typecode in TYPECODES:
            values = values if type(values) is list else list(values)
            size = self.block_size
            num = min(len(tokens) // size, len(values))  # (reads what TokenReader would)
            read = self._native.read(tokens, max(min(size, len(tokens)), num * size))
            return values, num, memoryview(read)  # (its slices: views, not copies)
        reader = TokenReader(tokens, self.block_size)
        if type(values) is not list:  # (a list is only sliced, never changed: no copy needed)
            values = list(values)
        num = min(reader.num_tokens // self.block_size, len(values))
        return values, num, reader.read_to(num * self.block_size)

    def _place_new(
        self, namespace: Hashable, query: bytes | memoryview, values: list[Any], num: int
    ) -> tuple[list[Any], list[Node], int]:
        """Under the lock: a new tick, the namespace's root made if needed, then ``_place``."""
        self._tick = next(self._clock)
        root = self._roots.get(namespace)
        if root is None:
            if num == 0:
                return [], [], 0
            root = self._roots[namespace] = Node(None, namespace, bytearray(), [], 0, [])
        return self._place(root, query, values, num)

    def _place(
        self, node: Node, query: bytes | memoryview, values: list[Any], num: int
    ) -> tuple[list[Any], list[Node], int]:
        """Insert's work under the lock: index the first ``num`` blocks of ``query`` (all read)
        below ``node``; return the values not adopted, the path now holding the placed
        blocks and the blocks of its last node on it (as ``descend``)."""
        bb, key, tick = self._block_token_bytes, self._child_key, self._tick
        end = num * bb
        rejected: list[Any] = []
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
        self, node: Node, key: Hashable, label: bytes | memoryview, values: list[Any], tick: int
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

    def _use_all(self, node: Node, tick: int) -> None:
        node.use_all(tick, self._hit_step)
        if node in self._queue:
            self._queue.update(node)

    def evict(self, num_blocks: int) -> list[Any]:
        """Remove up to ``num_blocks`` unpinned blocks and return their values, in order.

        Each step removes the evictable leaf block (no indexed block extends it, not pinned)
        with the smallest policy priority; parents become leaves as their last child goes.
        Removed nodes are unlinked and their storage reclaimed.
        """
        if not isinstance(num_blocks, int) or num_blocks < 0:
            raise ValueError(f"num_blocks must be a non-negative integer, got {num_blocks!r}")
        out: list[Any] = []
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
    ) -> list[Any]:
        """Remove block ``first_block`` of the indexed prefix of ``tokens`` in ``namespace``,
        every later block of that prefix and every block extending them (a subtree: no
        block stays cached without its parent); return their values, any order. Blocks
        before ``first_block`` stay. For blocks known bad (the exactness canary): unlike
        ``evict``, it picks what to remove, not the policy. Returns [] when fewer blocks are
        indexed. Raises PinnedBlocksError, removing nothing, when any of them is pinned (a
        running sequence reads them: try again once it closes). O(ids read + blocks removed).
        """
        if not isinstance(first_block, int) or first_block < 0:
            raise ValueError(f"first_block must be a non-negative integer, got {first_block!r}")
        reader = TokenReader(tokens, self.block_size)
        with self._lock:
            match, path, _ = self._find(reader, namespace)
            if match.num_blocks <= first_block:
                return []
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

    def _cut(self, top: Node) -> list[Any]:
        """Unlink ``top`` (unpinned) and its whole subtree; return their values."""
        out: list[Any] = []
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

    # --- pins ------------------------------------------------------------------------------

    def pin(self, match: Match) -> None:
        """Pin the blocks of ``match`` (counted: every pin needs its own unpin).

        Raises ValueError for a match from another index and StaleMatchError if some of its
        blocks were evicted (or replaced) since it was made.
        """
        handle = self._own(match)
        with self._lock:
            end: Node | None = None
            if match.num_blocks:
                end = self._resolve(match, handle)
                if end.depth + len(end.values) > match.num_blocks:
                    end = self._split(end, match.num_blocks - end.depth)
                node: Node | None = end
                while node is not None and node.parent is not None:
                    if node.pin_count == 0:
                        self._pinned_blocks += len(node.values)
                        self._queue.discard(node)
                    node.pin_count += 1
                    node = node.parent
            self._held.setdefault(id(match), (match, []))[1].append(end)

    def unpin(self, match: Match) -> None:
        """Undo one ``pin(match)``. Raises ValueError if ``match`` is not pinned."""
        self._own(match)
        with self._lock:
            held = self._held.get(id(match))
            if held is None or held[0] is not match:
                raise ValueError("unpin() of a match that is not pinned")
            ends = held[1]
            node = ends.pop()
            if not ends:
                del self._held[id(match)]
            while node is not None and node.parent is not None:
                node.pin_count -= 1
                if node.pin_count == 0:
                    self._pinned_blocks -= len(node.values)
                    if not node.children:
                        self._queue.update(node)
                node = node.parent

    def _own(self, match: Match) -> MatchHandle:
        if not isinstance(match, Match):
            raise TypeError(f"expected a Match, got {type(match).__name__}")
        if match.handle.owner is not self:
            raise ValueError("this match was made by another PrefixIndex")
        return match.handle

    def _resolve(self, match: Match, handle: MatchHandle) -> Node:
        """The node now holding the match's last block, verified to still hold its blocks."""
        node = handle.node
        if handle.epoch != self._epoch:  # blocks were evicted since: verify the whole path
            matched = TokenBytes(handle.query[: match.num_blocks * self._block_token_bytes])
            now, path, _ = self._find(TokenReader(matched), match.namespace)
            if now.num_blocks != match.num_blocks or not all(map(_is, now.values, match.values)):
                raise StaleMatchError("blocks of this match were evicted since it was made")
            node = path[-1]
        assert node is not None
        while node.depth >= match.num_blocks:
            assert node.parent is not None
            node = node.parent
        return node

    # --- introspection ---------------------------------------------------------------------

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

    def indexed_values(self) -> list[Any]:
        """Every indexed value (any order). O(total blocks); for checks and diagnostics."""
        with self._lock:
            out: list[Any] = []
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


def _is(a: object, b: object) -> bool:
    return a is b

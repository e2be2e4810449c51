"""PrefixIndex: token prefixes to per-block values, exact, bounded and thread-safe.

Structure: one radix tree of blocks per namespace (see :mod:`prefixkv.index.node`). Prefixes are
compared as raw token bytes, so a match is always verified token for token: there is no hash
whose collision could serve another prompt's blocks. Children are found with one dict lookup
keyed by their first block (``child_key``, the block bytes themselves by default).

Costs, for a query of q tokens (b = q / block_size blocks) whose path crosses p nodes:
- ``match``: O(q) byte conversion and ``memcmp`` in C, plus O(p + r) Python steps, where r is
  the number of use regions on the path (usually p; at most b). No scan over siblings.
- ``insert``: the same, plus O(new blocks) to copy labels and values.
- ``pin`` / ``unpin``: O(p) (the path is re-verified in O(b) only if blocks were evicted
  between ``match`` and ``pin``).
- ``evict(k)``: O((k + leaves touched) log n) amortized for n evictable leaves; never a scan or
  rebuild over all leaves.
Every public method takes one ``threading.Lock``; any number of threads may call them.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any

from prefixkv.index.check import check_index
from prefixkv.index.eviction_queue import EvictionQueue
from prefixkv.index.node import Node, Region
from prefixkv.index.policy import EvictionPolicy, LRUPolicy
from prefixkv.index.records import IndexStats, Match, MatchHandle, StaleMatchError
from prefixkv.tokens import TOKEN_BYTES, as_token_bytes

ChildKey = Callable[[bytes], Hashable]


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
    ) -> None:
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
        self.block_size = block_size
        self._block_token_bytes = block_size * TOKEN_BYTES  # bytes of one block's token ids
        self._child_key = child_key
        self._queue = EvictionQueue(policy or LRUPolicy())
        self._hit_step = self._queue.policy.hit_step
        self._roots: dict[Hashable, Node] = {}
        self._lock = threading.Lock()
        # Ticks: one per operation, increasing. Indexes sharing a clock (one per tenant of a
        # cache) have comparable use records; ``_tick`` is this index's latest.
        self._clock = clock if clock is not None else itertools.count(1)
        self._tick = 0
        self._epoch = 0  # bumped whenever blocks are removed; lets pin() skip re-verification
        self._num_blocks = 0
        self._num_nodes = 0
        self._pinned_blocks = 0
        self._held: dict[int, tuple[Match, list[Node | None]]] = {}  # by id(match)
        self._counts = dict.fromkeys(IndexStats._fields, 0)

    @property
    def policy(self) -> EvictionPolicy:
        return self._queue.policy

    # --- queries ---------------------------------------------------------------------------

    def match(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> Match:
        """Return the longest indexed prefix of ``tokens`` (whole blocks) in ``namespace``.

        Records one use of every matched block (recency/frequency for eviction) and counts the
        query in ``stats()``; never changes which blocks are indexed. Raises TypeError or
        ValueError for malformed tokens.
        """
        buf = as_token_bytes(tokens)
        end = len(buf) - len(buf) % self._block_token_bytes
        with self._lock:
            self._tick = next(self._clock)
            match, path = self._find(buf, end, namespace)
            for node in path[:-1]:
                self._use_all(node, self._tick)
            if path:
                used = match.num_blocks - path[-1].depth
                if used == len(path[-1].values):
                    self._use_all(path[-1], self._tick)
                else:
                    path[-1].use_prefix(used, self._tick, self._hit_step)
            self._count_query(
                len(buf) // TOKEN_BYTES, match.num_blocks, end // self._block_token_bytes
            )
            return match

    def peek(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> Match:
        """Like ``match`` but read-only: records no use and counts no query.

        For callers that inspect the cache without being a request (``store``, diagnostics).
        """
        buf = as_token_bytes(tokens)
        with self._lock:
            return self._find(buf, len(buf) - len(buf) % self._block_token_bytes, namespace)[0]

    def _find(self, buf: bytes, end: int, namespace: Hashable) -> tuple[Match, list[Node]]:
        root = self._roots.get(namespace)
        path, used = self._descend(root, buf, end) if root is not None else ([], 0)
        values: list[Any] = []
        for node in path[:-1]:
            values.extend(node.values)
        if path:
            values.extend(path[-1].values[:used])
        handle = MatchHandle(self, path[-1] if path else root, self._epoch, buf)
        return Match(len(values) * self.block_size, tuple(values), namespace, handle), path

    def _descend(self, root: Node, buf: bytes, end: int) -> tuple[list[Node], int]:
        """Nodes on the longest verified path for ``buf[:end]``, and blocks used in the last."""
        bb, key = self._block_token_bytes, self._child_key
        path: list[Node] = []
        node, pos, used = root, 0, 0
        while pos < end:
            child = node.children.get(key(buf[pos : pos + bb]))
            if child is None:
                break
            label = child.label
            if pos + len(label) <= end and buf.startswith(label, pos):
                path.append(child)
                node, pos, used = child, pos + len(label), len(child.values)
                continue
            common = _common_blocks(label, buf, pos, end, bb)
            if common:
                path.append(child)
                used = common
            break
        return path, used

    # --- mutation --------------------------------------------------------------------------

    def insert(
        self, tokens: Sequence[int] | Any, values: Sequence[Any], namespace: Hashable = None
    ) -> list[Any]:
        """Index ``values[i]`` under the i-th full block of ``tokens``.

        Uses at most ``len(values)`` leading blocks. Blocks already indexed keep their value;
        the given values that were not adopted (already indexed, or a sibling key collision
        under a non-injective ``child_key``) are returned in block order, for the caller to
        free. Records one use of every block on the path. Raises before mutating anything.
        """
        buf = as_token_bytes(tokens)
        values = list(values)
        num = min(len(buf) // self._block_token_bytes, len(values))
        end, bb = num * self._block_token_bytes, self._block_token_bytes
        with self._lock:
            self._tick = next(self._clock)
            tick = self._tick
            node = self._roots.get(namespace)
            if node is None:
                if num == 0:
                    return values[:num]
                node = self._roots[namespace] = Node(None, namespace, bytearray(), [], 0, [])
            rejected: list[Any] = []
            pos = block = 0
            while pos < end:
                child = node.children.get(self._child_key(buf[pos : pos + bb]))
                if child is None:
                    self._add_blocks(node, buf[pos:end], values[block:num], tick)
                    break
                common = _common_blocks(child.label, buf, pos, end, bb)
                if common == 0:  # sibling key collision: cannot place the rest
                    rejected.extend(values[block:num])
                    break
                rejected.extend(values[block : block + common])
                pos, block = pos + common * bb, block + common
                if common == len(child.values):
                    self._use_all(child, tick)
                elif pos == end:
                    child.use_prefix(common, tick, self._hit_step)
                else:
                    child = self._split(child, common)
                    self._use_all(child, tick)
                node = child
            return rejected

    def _add_blocks(self, node: Node, label: bytes, values: list[Any], tick: int) -> None:
        """Append new blocks below ``node``: in place if it is an unpinned leaf, else a child."""
        self._num_blocks += len(values)
        self._counts["inserted_blocks"] += len(values)
        if node.parent is not None and not node.children and node.pin_count == 0:
            node.extend(label, values, tick)
            self._queue.update(node)
            return
        child = Node(
            node,
            self._child_key(label[: self._block_token_bytes]),
            bytearray(label),
            values,
            node.depth + len(node.values),
            [Region(len(values), 1, tick)],
        )
        node.children[child.key] = child
        self._num_nodes += 1
        self._queue.discard(node)
        self._queue.update(child)

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
                out.extend(node.truncate(keep, self._block_token_bytes))
                if keep:
                    self._queue.update(node)
                else:
                    self._remove(node)
            if out:
                self._num_blocks -= len(out)
                self._counts["evicted_blocks"] += len(out)
                self._epoch += 1
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
            now, path = self._find(
                handle.buf, match.num_blocks * self._block_token_bytes, match.namespace
            )
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
            return IndexStats(**self._counts)

    def _count_query(self, query_tokens: int, hit_blocks: int, full_blocks: int) -> None:
        counts = self._counts
        counts["queries"] += 1
        counts["query_tokens"] += query_tokens
        counts["hit_tokens"] += hit_blocks * self.block_size
        if hit_blocks == 0:
            counts["misses"] += 1
        elif hit_blocks == full_blocks:
            counts["full_hits"] += 1
        else:
            counts["partial_hits"] += 1

    def check_invariants(self) -> None:
        """Raise AssertionError naming the first broken invariant. O(total blocks)."""
        with self._lock:
            check_index(self)


def _is(a: object, b: object) -> bool:
    return a is b


def _common_blocks(label: bytearray, buf: bytes, pos: int, end: int, bb: int) -> int:
    """Number of leading whole blocks of ``label`` equal to ``buf[pos:end]``.

    Binary search over blocks; each probe ``memcmp``s only the not-yet-verified middle range,
    so the total work is O(len) bytes in C plus O(log blocks) Python steps.
    """
    lo, hi = 0, min(len(label), end - pos) // bb  # blocks [0, lo) are known equal
    if buf.startswith(label[: hi * bb], pos):
        return hi
    hi -= 1  # some block in [0, hi) differs, so at most hi - 1 blocks are equal
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if buf.startswith(label[lo * bb : mid * bb], pos + lo * bb):
            lo = mid
        else:
            hi = mid - 1
    return lo

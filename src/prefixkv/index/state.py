"""The state every part of :class:`~prefixkv.index.tree.PrefixIndex` shares, and its
construction.

The index is one class assembled from one concept per module, each a layer over the one
below: this state, then matching (:mod:`.matching`), mutation (:mod:`.mutation`), removal
(:mod:`.removal`), pins (:mod:`.pins`) and the public class with its introspection
(:mod:`.tree`). Every attribute is set here; the layers only read and change them under
``_lock``.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Hashable, Iterator

from prefixkv.index.evicted import EvictionObserver
from prefixkv.index.eviction_queue import EvictionQueue
from prefixkv.index.native import NativeDescent
from prefixkv.index.node import Node
from prefixkv.index.policy import EvictionPolicy, LRUPolicy
from prefixkv.index.records import Match, MatchHandle
from prefixkv.index.values import LIST_VALUES, ValueStore
from prefixkv.tokens import TOKEN_BYTES

ChildKey = Callable[[bytes], Hashable]

# Builds a NamedTuple from a tuple of its fields in C: a NamedTuple's own __new__ is a Python
# function, a noticeable share of a 2 us match.
new_record = tuple.__new__


def same_bytes(block: bytes) -> Hashable:
    """The default child key: a block's bytes themselves (injective)."""
    return block


class IndexState:
    """The index's fields (see :class:`~prefixkv.index.tree.PrefixIndex` for the meaning of
    the constructor's arguments)."""

    def __init__(
        self,
        block_size: int = 16,
        *,
        policy: EvictionPolicy | None = None,
        child_key: ChildKey = same_bytes,
        clock: Iterator[int] | None = None,
        on_evict: EvictionObserver | None = None,
        native: NativeDescent | None = None,
        values: ValueStore = LIST_VALUES,
    ) -> None:
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
        self.block_size = block_size
        self._block_token_bytes = block_size * TOKEN_BYTES  # bytes of one block's token ids
        self._child_key = child_key
        self._native = native
        self._native_key = None if child_key is same_bytes else child_key  # (None: in C)
        self._store = values
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

    @property
    def value_store(self) -> ValueStore:
        """How this index keeps its values (:mod:`prefixkv.index.values`)."""
        return self._store

    def _empty_match(self, namespace: Hashable) -> Match:
        """The match of no block in ``namespace``."""
        return new_record(Match, (0, self._store.nothing(), namespace, self._no_blocks))

    def _use_all(self, node: Node, tick: int) -> None:
        """Record one use of every block of ``node`` (and requeue it if it is a leaf)."""
        node.use_all(tick, self._hit_step)
        if node in self._queue:
            self._queue.update(node)

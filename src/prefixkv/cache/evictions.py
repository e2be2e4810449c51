"""A bounded ring of recent evictions, by block name: when a block left RAM, and why.

The cache's indexes tell the ring of every run of blocks they evict (the index's
:class:`~prefixkv.index.evicted.EvictionObserver` hook); the ring names each block with the
chained block names of :mod:`prefixkv.tiers.naming` (a :class:`~prefixkv.tiers.tiered.
TieredCache` hands it its namer, so a name in the ring is the name of the block's record in
the tiers; a RAM-only cache uses :class:`LocalNamer`, the same chaining over BLAKE2b) and
keeps the newest ``capacity`` records. A name stands for its whole prefix in its namespace,
so looking up the name of a prompt's first uncached block says whether *that very prefix*
was cached and evicted, and finds nothing of any other namespace.

What needed the room (the *pressure*) is set by the cache around each eviction
(:meth:`EvictionRing.pressure`): ``store`` (caching new blocks: a request's prompt),
``running`` (KV for running sequences), ``reset`` (``/v1/cache/reset``); and whether the
request that needed it was of the evicted block's own tenant.

Costs: recording a run hashes its prefix from the first block (O(path blocks), about 0.1 us
a block with xxHash); a lookup hashes the prompt up to the block asked for. Memory: about
200 bytes a record.
"""

from __future__ import annotations

import hashlib
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from typing import Literal, NamedTuple, Protocol

from prefixkv.cache.tenants import tenant_of
from prefixkv.index.evicted import EvictedRun
from prefixkv.tokens import TOKEN_BYTES

Pressure = Literal["store", "running", "reset", "canary"]
DEFAULT_CAPACITY = 16384
"""Records kept: a few MB, minutes of eviction history on a busy server."""


class BlockNaming(Protocol):
    """Names the leading full blocks of token sequences per namespace (chained: a name
    stands for the whole prefix through its block). :class:`~prefixkv.tiers.naming.
    BlockNamer` is one."""

    def names(self, tokens: bytes, namespace: Hashable, num_blocks: int) -> list[bytes]: ...


class LocalNamer:
    """Chained BLAKE2b-128 names local to this process (no model fingerprint, no key): for a
    cache with no tiers, whose names never leave it."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size

    def names(self, tokens: bytes, namespace: Hashable, num_blocks: int) -> list[bytes]:
        size = self.block_size * TOKEN_BYTES
        parent = hashlib.blake2b(repr(namespace).encode(), digest_size=16).digest()
        out = []
        view = memoryview(tokens)
        for i in range(num_blocks):
            digest = hashlib.blake2b(parent, digest_size=16)
            digest.update(struct.pack("<I", self.block_size))
            digest.update(view[i * size : (i + 1) * size])
            parent = digest.digest()
            out.append(parent)
        return out


class EvictionRecord(NamedTuple):
    """One evicted block."""

    at: float
    """``time.time()`` when it was evicted."""
    pressure: Pressure
    """Why: a store, a running sequence or a reset needed the room, or the exactness canary
    found the block bad."""
    own_tenant: bool
    """The request that needed the room was of the block's own tenant (False: another
    tenant's, or a whole-cache reset)."""


class EvictionRing:
    """Implements EvictionObserver. Thread-safe; the newest ``capacity`` records by name
    (an evicted name evicted again moves to the newest end)."""

    def __init__(self, namer: BlockNaming, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"an eviction ring holds at least one record, got {capacity}")
        self.capacity = capacity
        self._namer = namer
        self._records: OrderedDict[bytes, EvictionRecord] = OrderedDict()
        self._lock = threading.Lock()
        self._context: tuple[Pressure, Hashable] | None = None

    def use_namer(self, namer: BlockNaming) -> None:
        """Name blocks with ``namer`` from now on (a TieredCache gives its own, before the
        cache evicts anything); forgets what was recorded under the old names."""
        with self._lock:
            self._namer = namer
            self._records.clear()

    @contextmanager
    def pressure(self, kind: Pressure, requester: Hashable) -> Iterator[None]:
        """Evictions inside the block are for ``kind`` on behalf of tenant ``requester``
        (None: no tenant). The cache holds its lock around it, so contexts never nest."""
        self._context = (kind, requester)
        try:
            yield
        finally:
            self._context = None

    def evicted(self, run: EvictedRun) -> None:
        """Record every block of ``run`` (EvictionObserver)."""
        kind, requester = self._context or ("store", None)  # an index evicting on its own
        record = EvictionRecord(time.time(), kind, requester == tenant_of(run.namespace))
        end = run.first_block + run.num_blocks
        with self._lock:
            for name in self._namer.names(run.tokens, run.namespace, end)[run.first_block :]:
                self._add(name, record)

    def _add(self, name: bytes, record: EvictionRecord) -> None:
        self._records[name] = record
        self._records.move_to_end(name)
        if len(self._records) > self.capacity:
            self._records.popitem(last=False)

    def find(self, tokens: bytes, namespace: Hashable, block: int) -> EvictionRecord | None:
        """The record of block ``block`` of ``tokens`` in ``namespace``, if it was evicted
        recently enough to be held. O(block) hashes (none while the ring is empty)."""
        with self._lock:
            if not self._records:
                return None
            name = self._namer.names(tokens, namespace, block + 1)[block]
            return self._records.get(name)

    def names(self) -> list[bytes]:
        """Held names, oldest first (for tests and diagnostics)."""
        with self._lock:
            return list(self._records)

    def __len__(self) -> int:
        return len(self._records)

    def check_invariants(self) -> None:
        if len(self._records) > self.capacity:
            raise AssertionError("EvictionRing: more records than its capacity")

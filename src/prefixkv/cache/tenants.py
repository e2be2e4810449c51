"""Tenants: one prefix index per tenant over one clock, and whose blocks eviction may take.

A namespace isolates hits (two requests share cached prefixes only within one namespace); a
*tenant* owns a set of namespaces for accounting, resets and capacity shares. The server's
namespaces are ``Namespace(tenant=<API key digest>, salt=<cache_salt>)``; any other namespace
value belongs to the tenant ``None``.

Each tenant has its own :class:`~prefixkv.index.PrefixIndex`, so per-tenant counts, pins and
resets cost nothing extra, while all indexes draw their ticks from one shared clock: use
records stay comparable across tenants, and eviction takes the globally least valuable
allowed block, exactly as one index would. With a ``share`` (a fraction of the pool), a
tenant at or under its share is *protected*: another tenant's stores cannot evict its blocks;
they evict their own, or those of tenants over their share (only down to that share).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Hashable, Iterator
from typing import Any, NamedTuple

from prefixkv.index.evicted import EvictionObserver
from prefixkv.index.policy import EvictionPolicy
from prefixkv.index.records import IndexStats
from prefixkv.index.tree import PrefixIndex


class Namespace(NamedTuple):
    """A namespace owned by ``tenant``; ``salt`` separates namespaces of one tenant."""

    tenant: Hashable
    salt: Hashable = None


def tenant_of(namespace: Hashable) -> Hashable:
    """The tenant owning ``namespace``: its ``tenant`` if a Namespace, else None."""
    return namespace.tenant if isinstance(namespace, Namespace) else None


class Tenants:
    """The per-tenant indexes of one cache. Not thread-safe: the cache calls it under its
    lock. Tenants are created on first use and kept: ``tenant_of`` must map to a bounded set
    (API keys, not salts)."""

    def __init__(
        self,
        block_size: int,
        policy: EvictionPolicy | None,
        total_blocks: int,
        share: float | None = None,
        on_evict: EvictionObserver | None = None,
    ) -> None:
        """``on_evict``: given to every tenant's index (see :mod:`prefixkv.index.evicted`)."""
        if share is not None and not 0.0 < share <= 1.0:
            raise ValueError(f"a tenant share must be in (0, 1], got {share!r}")
        self.block_size = block_size
        self.policy = policy
        self.quota = None if share is None else math.floor(share * total_blocks)
        self._on_evict = on_evict
        self._clock = itertools.count(1)  # shared: ticks are unique across all indexes
        self._indexes: dict[Hashable, PrefixIndex] = {}

    def index(self, tenant: Hashable) -> PrefixIndex:
        """The tenant's index, created empty on first use."""
        found = self._indexes.get(tenant)
        if found is None:
            found = PrefixIndex(
                self.block_size, policy=self.policy, clock=self._clock, on_evict=self._on_evict
            )
            self._indexes[tenant] = found
        return found

    def __iter__(self) -> Iterator[tuple[Hashable, PrefixIndex]]:
        return iter(list(self._indexes.items()))

    def __len__(self) -> int:
        """Blocks indexed, all tenants together."""
        return sum(len(index) for index in self._indexes.values())

    @property
    def pinned_blocks(self) -> int:
        return sum(index.pinned_blocks for index in self._indexes.values())

    def stats(self) -> IndexStats:
        """The counters of all tenants, added up."""
        totals = [0] * len(IndexStats._fields)
        for index in self._indexes.values():
            totals = [a + b for a, b in zip(totals, index.stats(), strict=True)]
        return IndexStats(*totals)

    def evict(self, count: int, requester: Hashable) -> list[Any]:
        """Remove up to ``count`` blocks for ``requester``'s store, least valuable first
        among the blocks it may take (its own, and other tenants' above their share).
        O(count x tenants x log n); one index call when a single tenant is eligible."""
        return self._evict(count, lambda tenant, index: self._takeable(tenant, index, requester))

    def evict_any(self, count: int) -> list[Any]:
        """Remove up to ``count`` blocks, least valuable first, whatever their tenant's
        share: room for running sequences' KV (shares bound what stores may evict; a request
        that cannot get KV cannot run at all)."""
        return self._evict(count, lambda tenant, index: len(index))

    def _evict(self, count: int, takeable: Callable[[Hashable, PrefixIndex], int]) -> list[Any]:
        out: list[Any] = []
        while len(out) < count:
            heads = []
            for tenant, index in self._indexes.items():
                room = takeable(tenant, index)
                priority = index.next_eviction() if room else None
                if priority is not None:
                    heads.append((priority, room, index))
            if not heads:
                break
            if len(heads) == 1:
                _, room, index = heads[0]
                out += index.evict(min(count - len(out), room))
                break
            _, _, index = min(heads, key=lambda head: head[0])
            out += index.evict(1)
        return out

    def evictable_by(self, requester: Hashable) -> int:
        """How many blocks ``evict(count, requester)`` could remove now: unpinned blocks of
        each tenant, up to what ``requester`` may take of it."""
        return sum(
            min(index.evictable_blocks, self._takeable(tenant, index, requester))
            for tenant, index in self._indexes.items()
        )

    def _takeable(self, tenant: Hashable, index: PrefixIndex, requester: Hashable) -> int:
        """How many of ``tenant``'s blocks ``requester`` may evict now."""
        if self.quota is None or tenant == requester:
            return len(index)
        return max(0, len(index) - self.quota)

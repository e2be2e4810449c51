"""NullCache: the prefix cache that caches nothing (the uncached baseline)."""

from __future__ import annotations

import threading
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from prefixkv.cache.layout import KVLayout
from prefixkv.cache.lease import Lease
from prefixkv.cache.protocol import CacheStats
from prefixkv.tokens import as_token_bytes, token_count


class NullCache:
    """Implements PrefixCache: every lookup misses, every store keeps nothing.

    It still validates its input exactly like PrefixKVCache, so a caller cannot tell the two
    apart by their errors, only by their hits.
    """

    def __init__(
        self, layout: KVLayout, block_size: int = 16, device: str | torch.device = "cpu"
    ) -> None:
        self.layout = layout
        self.block_size = block_size
        self.device = torch.device(device)
        self._queries = self._tokens = 0
        self._counting = threading.Lock()

    def lookup(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> Lease:
        count = token_count(as_token_bytes(tokens))
        with self._counting:
            self._queries += 1
            self._tokens += count
        return Lease(0, namespace, self.layout, self.device, _no_read, _nothing)

    def store(self, tokens: Sequence[int] | Any, kv: Any, namespace: Hashable = None) -> int:
        count = token_count(as_token_bytes(tokens))
        self.layout.check_kv(kv, count, self.device)
        return 0

    def reset(self) -> int:
        return 0

    def reset_tenant(self, tenant: Hashable) -> int:
        return 0

    def tenant_stats(self, tenant: Hashable) -> CacheStats:
        """The counts of every tenant: a cache that keeps nothing tells nobody anything."""
        return self.stats()

    def stats(self) -> CacheStats:
        return CacheStats(
            queries=self._queries,
            query_tokens=self._tokens,
            hit_tokens=0,
            full_hits=0,
            partial_hits=0,
            misses=self._queries,
            inserted_blocks=0,
            dropped_blocks=0,
            evicted_blocks=0,
            used_blocks=0,
            free_blocks=0,
            total_blocks=0,
            pinned_blocks=0,
            block_size=self.block_size,
            used_bytes=0,
            capacity_bytes=0,
        )

    def check_invariants(self) -> None:
        return None


def _nothing() -> None:
    return None


def _no_read(out: torch.Tensor) -> None:
    raise AssertionError("a NullCache lease has no tokens to read")

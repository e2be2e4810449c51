"""Wiring a publisher to a cache: which names blocks get, and which hooks report."""

from __future__ import annotations

from prefixkv.cache.paged import PrefixKVCache
from prefixkv.cache.protocol import BlockStore
from prefixkv.events.publisher import KVEventPublisher
from prefixkv.tiers.codec import RawCodec
from prefixkv.tiers.naming import BlockNamer, fingerprint_of
from prefixkv.tiers.tiered import TieredCache


def namer_for(cache: BlockStore, model_fingerprint: bytes) -> BlockNamer:
    """The names ``cache``'s blocks are published under: a tiered cache's own (so a block
    has one name in RAM and below), else the names a tier without compression or key would
    give them. ValueError for a cache that keeps no blocks (nothing to publish)."""
    if isinstance(cache, TieredCache):
        return cache.namer
    if isinstance(cache, PrefixKVCache):
        fingerprint = fingerprint_of(model_fingerprint, RawCodec().name.encode())
        return BlockNamer(fingerprint, cache.block_size)
    raise ValueError("KV events need a prefix cache: this one keeps no blocks")


def attach(cache: BlockStore, publisher: KVEventPublisher) -> None:
    """Report ``cache``'s RAM blocks and, for a tiered cache, its tiers' records to
    ``publisher``. Attach before the cache holds anything: blocks held before are never
    announced. ValueError for a cache that keeps no blocks."""
    if isinstance(cache, TieredCache):
        cache.hot.events = publisher.ram
        cache.observe(publisher.tiers)
    elif isinstance(cache, PrefixKVCache):
        cache.events = publisher.ram
    else:
        raise ValueError("KV events need a prefix cache: this one keeps no blocks")

"""The KV cache layer: a prefix index over a bounded pool of KV tensors (NumPy + PyTorch).

- :mod:`.protocol`: :class:`PrefixCache`, what an engine needs from a cache, and its records
- :mod:`.lease`: :class:`Lease`, a looked-up prefix pinned until released
- :mod:`.paged`: :class:`PrefixKVCache`, the index plus the pool under one lock
- :mod:`.null`: :class:`NullCache`, the cache that keeps nothing (the uncached baseline)
- :mod:`.tenants`: :class:`Namespace` (tenant, salt), per-tenant indexes and shares
- :mod:`.pool`: :class:`BlockPool`, preallocated KV blocks and their free list
- :mod:`.layout`: :class:`KVLayout`, the shape of a model's keys and values
"""

from prefixkv.cache.layout import KVLayout
from prefixkv.cache.lease import Lease
from prefixkv.cache.null import NullCache
from prefixkv.cache.paged import PrefixKVCache
from prefixkv.cache.protocol import CacheStats, PrefixCache
from prefixkv.cache.tenants import Namespace

__all__ = [
    "CacheStats",
    "KVLayout",
    "Lease",
    "Namespace",
    "NullCache",
    "PrefixCache",
    "PrefixKVCache",
]

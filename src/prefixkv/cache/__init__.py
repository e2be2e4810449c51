"""The KV cache layer: a prefix index over a bounded pool of KV tensors (NumPy + PyTorch).

- :mod:`.protocol`: :class:`BlockStore`, the one cache interface, and its records
- :mod:`.table`: :class:`BlockTable`, one request's blocks from ``open`` to ``close``
- :mod:`.lease`: :class:`Lease`, what ``PrefixKVCache.lookup`` returns (tests, benchmarks)
- :mod:`.paged`: :class:`PrefixKVCache`, the index plus the pool under one lock
- :mod:`.null`: :class:`NullCache`, the cache that keeps nothing (the uncached baseline)
- :mod:`.tenants`: :class:`Namespace` (tenant, salt), per-tenant indexes and shares
- :mod:`.pins`: prefixes pinned for a while (``/v1/cache/pin``), within their limits
- :mod:`.pool`: :class:`BlockPool`, preallocated KV blocks and their free list
- :mod:`.layout`: :class:`KVLayout`, the shape of a model's keys and values
"""

from prefixkv.cache.layout import KVLayout
from prefixkv.cache.lease import Lease
from prefixkv.cache.null import NullCache
from prefixkv.cache.paged import PrefixKVCache
from prefixkv.cache.protocol import BlockStore, CacheStats
from prefixkv.cache.tenants import Namespace

__all__ = [
    "BlockStore",
    "CacheStats",
    "KVLayout",
    "Lease",
    "Namespace",
    "NullCache",
    "PrefixKVCache",
]

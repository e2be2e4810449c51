"""prefixkv: exact prefix KV-cache reuse for LLM inference.

The cache layer (this package's top level) needs only NumPy and PyTorch; the Hugging Face
engine lives in :mod:`prefixkv.engine` and is imported lazily.
"""

from __future__ import annotations

from prefixkv.cache import PrefixKVCache
from prefixkv.cache_api import CacheStats, Lease, PrefixCache
from prefixkv.index import PrefixIndex
from prefixkv.layout import KVLayout
from prefixkv.match import IndexStats, Match, StaleMatchError
from prefixkv.null_cache import NullCache
from prefixkv.policy import BlockAccess, EvictionPolicy, LFUPolicy, LRUPolicy

__all__ = [
    "BlockAccess",
    "CacheStats",
    "EvictionPolicy",
    "IndexStats",
    "KVLayout",
    "LFUPolicy",
    "LRUPolicy",
    "Lease",
    "Match",
    "NullCache",
    "PrefixCache",
    "PrefixIndex",
    "PrefixKVCache",
    "StaleMatchError",
]
__version__ = "0.1.0"

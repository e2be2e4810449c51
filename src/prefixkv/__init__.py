"""prefixkv: exact prefix KV-cache reuse for LLM inference.

The cache layer (this package's top level) needs only NumPy and PyTorch; the Hugging Face
engine lives in :mod:`prefixkv.engine` and is imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefixkv.cache import PrefixKVCache
from prefixkv.cache_api import CacheStats, Lease, PrefixCache
from prefixkv.index import PrefixIndex
from prefixkv.layout import KVLayout
from prefixkv.match import IndexStats, Match, StaleMatchError
from prefixkv.null_cache import NullCache
from prefixkv.policy import BlockAccess, EvictionPolicy, LFUPolicy, LRUPolicy

if TYPE_CHECKING:
    from prefixkv.engine.engine import Completion, Engine

__all__ = [
    "BlockAccess",
    "CacheStats",
    "Completion",
    "Engine",
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


def __getattr__(name: str) -> Any:
    # Engine and Completion import transformers (seconds); load them only when asked for.
    if name in ("Engine", "Completion"):
        from prefixkv.engine import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'prefixkv' has no attribute {name!r}")

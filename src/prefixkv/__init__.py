"""prefixkv: exact prefix KV-cache reuse for LLM inference.

Three layers, each importable alone: :mod:`prefixkv.index` (NumPy only), :mod:`prefixkv.cache`
(adds PyTorch) and :mod:`prefixkv.engine` (adds Hugging Face transformers, the ``[hf]`` extra).
Importing ``prefixkv`` loads only the index; the other names load on first use, so
``import prefixkv.index`` never imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from prefixkv.index import (
    BlockAccess,
    EvictionPolicy,
    IndexStats,
    LFUPolicy,
    LRUPolicy,
    Match,
    PrefixIndex,
    StaleMatchError,
)

if TYPE_CHECKING:
    from prefixkv.cache import BlockStore, CacheStats, KVLayout, Lease, NullCache, PrefixKVCache
    from prefixkv.engine.engine import Engine
    from prefixkv.engine.request import Completion

__all__ = [
    "BlockAccess",
    "BlockStore",
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
    "PrefixIndex",
    "PrefixKVCache",
    "StaleMatchError",
]
__version__ = "0.1.0"

# Names that load a heavier layer, and the module each lives in.
_LAZY = {
    "BlockStore": "prefixkv.cache",
    "CacheStats": "prefixkv.cache",
    "KVLayout": "prefixkv.cache",
    "Lease": "prefixkv.cache",
    "NullCache": "prefixkv.cache",
    "PrefixKVCache": "prefixkv.cache",
    "Completion": "prefixkv.engine.request",
    "Engine": "prefixkv.engine.engine",
}


def __getattr__(name: str) -> Any:
    # PEP 562: import torch (the cache) or transformers (the engine) only when asked for.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'prefixkv' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

"""prefixkv's :class:`~prefixkv.index.PrefixIndex` as SGLang 0.5.x's radix cache.

``pip install -e .`` registers the entry point ``prefixkv`` in SGLang's ``sglang.srt.plugins``
group; SGLang's processes call :func:`register` at start, after which
``sglang serve ... --radix-cache-backend prefixkv`` builds a :class:`PrefixKVRadixCache`.
Importing this module imports SGLang (only this module of prefixkv does).

What SGLang's scheduler sees (the ``BasePrefixCache`` contract):

* a node handle is a :class:`~prefixkv.index.Match` (``last_device_node`` of a match or an
  insert); ``inc_lock_ref`` / ``dec_lock_ref`` pin and unpin it, counted per handle;
* block values are SGLang's KV slot indices: the first slot of each page (its slots are
  consecutive, see :mod:`.sglang_pages`), kept as int64 runs (``array('q')``, the index's
  ``INT64_VALUES`` store), so neither an insert nor a match makes a Python int per page;
* ``evict(num_tokens)`` frees exactly the least recently used whole pages that cover
  ``num_tokens`` (SGLang's own tree frees whole nodes, often more); sizes are in tokens;
* KV events (``--kv-events-config``): ``BlockStored`` per new page with SGLang's block hashes
  and parent links, ``BlockRemoved`` per evicted page, ``AllBlocksCleared`` on reset; for
  prefixes without ``extra_key``/``cache_salt`` (a namespaced one raises NotImplementedError).

Not supported (the factory says so): EAGLE bigram keys, hybrid SWA/Mamba models, hierarchical
cache, a disabled radix cache, eviction policies other than ``lru`` and ``lfu``.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Sequence
from typing import Any, cast

from prefixkv.bench.peers.sglang import SGLANG_STUBS
from prefixkv.bench.peers.stubs import one_line, quiet_import, stubbed_imports
from prefixkv.index import INT64_VALUES, Match, PrefixIndex, policy_by_name
from prefixkv.index.native import native_descent_or_none
from prefixkv.integrations.sglang_pages import blocks_for, namespace_of, page_firsts, page_slots

INSTALL = "pip install --no-deps sglang==0.5.23 msgspec==0.22.0 dill==0.4.1"

try:
    with quiet_import(), stubbed_imports(SGLANG_STUBS, clients=("sglang",)):
        import torch
        from sglang.srt.disaggregation.kv_events import (
            BlockRemoved,
            BlockStored,
            StorageMedium,
            kv_event_namespace_seed,
            namespaced_block_hash,
        )
        from sglang.srt.mem_cache.base_prefix_cache import (
            BasePrefixCache,
            DecLockRefParams,
            DecLockRefResult,
            EvictParams,
            EvictResult,
            IncLockRefResult,
            InsertParams,
            InsertResult,
            MatchPrefixParams,
            MatchResult,
        )
        from sglang.srt.mem_cache.events import KVCacheEventRecorder
        from sglang.srt.mem_cache.radix_cache import RadixKey
        from sglang.srt.mem_cache.registry import (
            get_radix_cache_factory,
            register_radix_cache_backend,
        )
        from sglang.srt.mem_cache.utils import get_storage_hash_str, hash_str_to_int64
except Exception as exc:  # ImportError, or whatever SGLang's import chain raises
    raise ImportError(
        f"prefixkv.integrations.sglang needs SGLang 0.5.x: {INSTALL} ({one_line(exc)})"
    ) from exc

__all__ = ["BACKEND", "PrefixKVRadixCache", "register"]

BACKEND = "prefixkv"
"""The name ``--radix-cache-backend`` selects."""


class PrefixKVRadixCache(BasePrefixCache):  # type: ignore[misc]  # SGLang is untyped
    """SGLang's ``BasePrefixCache`` over a :class:`PrefixIndex` (module docstring)."""

    def __init__(self, params: Any) -> None:
        if params.disable or params.is_eagle:
            raise ValueError("the prefixkv radix cache needs an enabled cache without EAGLE")
        self.disable = False
        self.is_eagle = False
        self.req_to_token_pool = params.req_to_token_pool
        self.token_to_kv_pool_allocator = params.token_to_kv_pool_allocator
        self.page_size = int(params.page_size)
        self.sliding_window_size = None
        self.policy = policy_by_name(params.eviction_policy)  # ValueError names the choices
        device = getattr(self.token_to_kv_pool_allocator, "device", "cpu")
        # (as SGLang's RadixCache: an allocator's device of another kind means the CPU)
        self.device = torch.device(device if isinstance(device, str | torch.device) else "cpu")
        self.kv_events = KVCacheEventRecorder(
            enabled=params.enable_kv_cache_events,
            page_size=self.page_size,
            dynamo_format=params.dynamo_kv_event_format,
            lora_names=params.kv_event_lora_names,
        )
        self._event_seed = kv_event_namespace_seed(extra_key=None, cache_salt=None)
        if params.enable_metrics:
            self.init_metrics_collector()
        self.reset()

    # --- queries -----------------------------------------------------------------------------

    def reset(self) -> None:
        # (SGLang's array('q') ids read in place by the native descent, where it builds)
        # (block values: each page's first slot, packed as int64 runs)
        self.index = PrefixIndex(
            self.page_size,
            policy=self.policy,
            native=native_descent_or_none(),
            values=INT64_VALUES,
        )
        self._event_hashes: dict[int, int] = {}  # first slot of a page -> its event hash
        self.root_node = self.index.peek(())
        self._empty_indices = torch.empty((0,), dtype=torch.int64, device=self.device)
        self.kv_events.record_all_cleared()

    def match_prefix(self, params: MatchPrefixParams) -> MatchResult:
        key = params.key
        plain = key.extra_key is None and key.cache_salt is None
        if plain and key.limit is None and not key.is_bigram:
            match = self.index.match(key.token_ids)  # the common case, without helper calls
        else:
            match = self.index.match(_tokens(key), namespace_of(key.extra_key, key.cache_salt))
        # (built in C: MatchResult's own __new__ is a Python function, 0.4 us of a 4 us match)
        return _new(MatchResult, (match.num_tokens, match, match, match, *_MATCH_DEFAULTS))

    def touch_prefix(self, key: RadixKey) -> None:
        self.index.match(_tokens(key), namespace_of(key.extra_key, key.cache_salt))

    def path_device_indices(self, node: Match) -> torch.Tensor:
        if not node.values:
            return self._empty_indices
        return page_slots(cast("array[int]", node.values), self.page_size, self.device)

    def dfs_weight_order(self, node_handles: Sequence[Match]) -> list[int]:
        """Requests sharing a prefix next to each other: by namespace, then slot path."""
        return sorted(
            range(len(node_handles)),
            key=lambda i: (repr(node_handles[i].namespace), node_handles[i].values),
        )

    # --- mutation ----------------------------------------------------------------------------

    def insert(self, params: InsertParams) -> InsertResult:
        key, size = params.key, len(params.key)  # (RadixKey's len is a Python call)
        if size % self.page_size:  # (page_aligned copies the ids even when aligned)
            key = key.page_aligned(self.page_size)
            size = len(key)
        tokens = _tokens(key)  # (converted by the index as it reads them: once, no copy)
        namespace = namespace_of(key.extra_key, key.cache_salt)
        if params.value is None:
            raise ValueError("InsertParams.value: the KV slots of the key are required")
        if self.kv_events.enabled and namespace is not None:
            raise NotImplementedError("KV events of namespaced prefixes (extra_key, cache_salt)")
        value = params.value
        # (numel: a C call, where a tensor's len is a Python one, 0.7 us of a 13 us insert)
        firsts = page_firsts(value if value.numel() == size else value[:size], self.page_size)
        # (the insert's own path gives the node handle: no second descent to find it)
        rejected, node = self.index.insert_with_match(tokens, firsts, namespace)
        prefix_len = len(rejected) * self.page_size
        if self.kv_events.enabled and len(firsts) > len(rejected):
            self._record_stores(key, firsts, len(rejected))
        return InsertResult(prefix_len=prefix_len, total_len=size, last_device_node=node)

    def checkpoint(self, req: Any, *, up_to: int, **kwargs: Any) -> None:
        """SGLang's contract (``BasePrefixCache.checkpoint``): the tree adopts the row's KV
        up to ``up_to``, the row points at the tree's slots, the request holds a lock on the
        new last node; the row's own duplicates of slots already in the tree are freed."""
        kv, pool = req.kv, self.req_to_token_pool
        key = RadixKey(
            req.full_untruncated_fill_ids[:up_to], req.extra_key, cache_salt=req.cache_salt
        ).page_aligned(self.page_size)
        row = pool.req_to_token[kv.req_pool_idx, : len(key)]
        result = self.insert(InsertParams(key=key, value=row.to(torch.int64, copy=True)))
        kv.cache_inserted_len = max(kv.cache_inserted_len, len(key))
        self.token_to_kv_pool_allocator.free_segment(
            row[kv.cache_protected_len : result.prefix_len], start_pos=kv.cache_protected_len
        )
        node = result.last_device_node
        indices = self.path_device_indices(node)
        pool.write(
            (kv.req_pool_idx, slice(kv.cache_protected_len, len(indices))),
            indices[kv.cache_protected_len :],
        )
        kv.cache_protected_len = len(indices)
        self.unlock(req.lock)
        req.lock = self.lock(node)
        req.last_node = node

    def evict(self, params: EvictParams) -> EvictResult:
        start = time.perf_counter()
        firsts = self.index.evict(blocks_for(params.num_tokens, self.page_size))
        if firsts:
            freed = page_slots(cast("array[int]", firsts), self.page_size, self.device)
            self.token_to_kv_pool_allocator.free_segment(freed, start_pos=0)
            if self.kv_events.enabled:
                hashes = [self._event_hashes.pop(first) for first in firsts]
                self.kv_events.enqueue(BlockRemoved(block_hashes=hashes, medium=_GPU))
        evicted = len(firsts) * self.page_size
        self.update_eviction_metrics(evicted, start)  # (a no-op without --enable-metrics)
        return EvictResult(num_tokens_evicted=evicted)

    def inc_lock_ref(self, node: Match) -> IncLockRefResult:
        before = self.index.pinned_blocks
        if node.values:
            self.index.pin(node)  # StaleMatchError if its pages were evicted since
        return IncLockRefResult(delta=(before - self.index.pinned_blocks) * self.page_size)

    def dec_lock_ref(self, node: Match, params: DecLockRefParams | None = None) -> Any:
        before = self.index.pinned_blocks
        if node.values:
            self.index.unpin(node)
        return DecLockRefResult(delta=(before - self.index.pinned_blocks) * self.page_size)

    # --- sizes (tokens) ----------------------------------------------------------------------

    def evictable_size(self) -> int:
        return self.index.evictable_blocks * self.page_size

    def protected_size(self) -> int:
        return self.index.pinned_blocks * self.page_size

    def total_size(self) -> int:
        return len(self.index) * self.page_size

    def supports_prefix_sharing(self) -> bool:
        return True

    def pretty_print(self) -> None:
        print(f"prefixkv radix cache: {len(self.index)} pages of {self.page_size} tokens")

    # --- KV events ---------------------------------------------------------------------------

    def _record_stores(self, key: RadixKey, firsts: Sequence[int], old: int) -> None:
        """One BlockStored per new page (pages ``old`` on), linked to its parent page."""
        chain = get_storage_hash_str(key, None, page_size=self.page_size)
        hashes = [
            namespaced_block_hash(hash_str_to_int64(h), namespace_seed=self._event_seed)
            for h in chain
        ]
        tokens = key.token_ids
        size = self.page_size
        for page in range(old, len(firsts)):
            self._event_hashes[firsts[page]] = hashes[page]
            self.kv_events.enqueue(
                BlockStored(
                    block_hashes=[hashes[page]],
                    parent_block_hash=hashes[page - 1] if page else None,
                    token_ids=list(tokens[page * size : (page + 1) * size]),
                    block_size=size,
                    lora_id=None,
                    medium=_GPU,
                    cache_salt=None,
                    session_id=None,
                    lora_name=None,
                )
            )


_GPU = StorageMedium.GPU  # SGLang's name for the device tier, whatever the device
_new = tuple.__new__
_MATCH_DEFAULTS = MatchResult(0, None, None, None)[4:]  # the fields a match leaves at default


def _tokens(key: RadixKey) -> Any:
    """The key's token ids as the index reads them (it uses whole pages only)."""
    if key.is_bigram:
        raise NotImplementedError("EAGLE bigram keys are not supported by prefixkv")
    return key.token_ids if key.limit is None else key.raw_token_ids()


def _factory(ctx: Any) -> PrefixKVRadixCache:
    """SGLang's ``RadixCacheFactory``: refuses the set-ups the adapter does not cover."""
    unsupported = {
        "hybrid SWA models": ctx.is_hybrid_swa,
        "hybrid Mamba models": ctx.is_hybrid_ssm,
        "--enable-hierarchical-cache": ctx.enable_hierarchical_cache,
        "--disable-radix-cache": ctx.disable_radix_cache,
        "DSA models": ctx.is_dsa,
    }
    refused = [name for name, on in unsupported.items() if on]
    if refused:
        raise ValueError(f"--radix-cache-backend {BACKEND} does not support {', '.join(refused)}")
    return PrefixKVRadixCache(ctx.params)


def register() -> None:
    """SGLang general-plugin entry point: register the ``prefixkv`` radix-cache backend
    (idempotent: SGLang may load plugins once per process, and tests call it again)."""
    if get_radix_cache_factory(BACKEND) is None:
        register_radix_cache_backend(BACKEND, _factory)

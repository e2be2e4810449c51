"""SGLang's radix trees as index-benchmark subjects, driven through the installed package on
CPU (nothing copied from it), all through the same SGLang-shaped calls:

* ``classic``: ``sglang.srt.mem_cache.radix_cache.RadixCache``, the Python tree;
* ``unified``: ``UnifiedRadixCache`` with its Rust TreeCore, SGLang 0.5.23's default tree;
* ``prefixkv``: prefixkv's backend for SGLang (:mod:`prefixkv.integrations.sglang`).

Install with ``benchmarks/install_peers.sh``. Fairness notes:

* SGLang's scheduler caps a lookup at ``len(prompt) - 1`` tokens (the last token must be
  recomputed for its logits); ``match`` here does not, like prefixkv's match.
* ``match_prefix`` mutates: it refreshes access times along the path and splits the node
  where a match ends inside it (so a repeated partial match is a full-node match from the
  second call on).
* SGLang keeps a request's tokens as ``array('q')``: that is its native form, and in the
  ``[list]`` form each call pays the ``array('q', list)`` conversion itself.
"""

from __future__ import annotations

from array import array
from typing import Any, NamedTuple

from prefixkv.bench.peers.stubs import PeerUnavailable, one_line, quiet_import, stubbed_imports

__all__ = ["SGLangRadix"]

# Imported by SGLang's import chain (package __init__, sglang.srt.utils, model configs,
# kernels) but never called by RadixCache. Each is replaced only when it is not installed;
# benchmarks/install_peers.sh installs none of them.
#   triton      - GPU kernel compiler (~285 MB wheel); sglang.kernels.* define @triton.jit
#                 kernels at import time.
#   torchvision - PyPI wheels are CUDA builds that do not load against CPU torch; only
#                 multimodal preprocessing uses it.
#   IPython     - notebook display helpers in sglang.utils.
#   aiohttp     - HTTP client of the sglang.lang frontend.
#   tvm_ffi     - apache-tvm-ffi, bindings of the GPU custom all-reduce kernels.
#   sentencepiece      - tokenizer of one model config (InternVL).
#   compressed_tensors - quantization config formats.
#   orjson, pybase64, zmq - JSON / base64 / ZeroMQ of the server and IPC paths.
#   partial_json_parser - tool-call parsing, imported by UnifiedRadixCache's module chain.
# msgspec and dill cannot be replaced (SGLang subclasses msgspec.Struct and serialises a
# class with dill at import time): install_peers.sh installs them.
SGLANG_STUBS = (
    "triton",
    "torchvision",
    "IPython",
    "aiohttp",
    "tvm_ffi",
    "sentencepiece",
    "compressed_tensors",
    "orjson",
    "pybase64",
    "zmq",
    "partial_json_parser",
)

KINDS = ("classic", "unified", "prefixkv")
"""Which tree a :class:`SGLangRadix` drives (module docstring)."""


class _SGLang(NamedTuple):
    """The parts of SGLang the subject uses."""

    torch: Any
    RadixCache: Any
    RadixKey: Any
    MatchPrefixParams: Any
    InsertParams: Any
    EvictParams: Any
    UnifiedRadixCache: Any
    CacheInitParams: Any
    FULL: Any
    version: str


def load_sglang() -> _SGLang:
    """Import SGLang's radix cache (placeholders for what is missing, see ``SGLANG_STUBS``).
    Raises PeerUnavailable with a one-line reason when it cannot be imported."""
    try:
        with quiet_import(), stubbed_imports(SGLANG_STUBS, clients=("sglang",)):
            import torch
            from sglang.srt.mem_cache.base_prefix_cache import (
                EvictParams,
                InsertParams,
                MatchPrefixParams,
            )
            from sglang.srt.mem_cache.cache_init_params import CacheInitParams
            from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey
            from sglang.srt.mem_cache.unified_cache.components import ComponentType
            from sglang.srt.mem_cache.unified_radix_cache import UnifiedRadixCache
    except Exception as exc:  # ImportError, or anything an import chain raises
        raise PeerUnavailable(f"sglang not importable: {one_line(exc)}") from exc
    import sglang

    version = getattr(sglang, "__version__", "?")
    return _SGLang(
        torch,
        RadixCache,
        RadixKey,
        MatchPrefixParams,
        InsertParams,
        EvictParams,
        UnifiedRadixCache,
        CacheInitParams,
        ComponentType.FULL,
        version,
    )


def _build_cache(api: _SGLang, kind: str, allocator: Any, page_size: int) -> Any:
    """The tree ``kind`` names, over ``allocator``, LRU, without metrics or KV events."""
    if kind == "classic":
        return api.RadixCache.create_simulated(mock_allocator=allocator, page_size=page_size)
    params = api.CacheInitParams(
        disable=False,
        req_to_token_pool=None,
        token_to_kv_pool_allocator=allocator,
        page_size=page_size,
        tree_components=(api.FULL,),
        tree_core_backend="rust",
    )
    if kind == "unified":
        cache = api.UnifiedRadixCache(params)
        if cache._tree_core_backend != "rust":  # SGLang falls back to Python, saying why
            raise PeerUnavailable("SGLang's Rust TreeCore did not load here")
        return cache
    if kind == "prefixkv":
        from prefixkv.integrations.sglang import PrefixKVRadixCache

        return PrefixKVRadixCache(params)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


class _FakeKVAllocator:
    """Stand-in for SGLang's token-to-KV-pool allocator.

    ``RadixCache`` only reads ``.device`` and calls ``free_segment`` (on evict). ``alloc``
    hands out the next ``n`` KV indices as a view of a preallocated int64 tensor, as SGLang's
    allocator slices its free-page tensor (O(1)); indices repeat after ``ARENA`` tokens
    (values are opaque to the tree). ``live`` counts indices handed out and not freed: after
    every call it equals the number of tokens held by the tree.
    """

    ARENA = 1 << 21

    def __init__(self, torch: Any, page_size: int) -> None:
        self.device = torch.device("cpu")
        self.page_size = page_size
        self._arena = torch.arange(1, 1 + self.ARENA, dtype=torch.int64)  # 0: SGLang's padding
        self.reset()

    def reset(self) -> None:
        self.next_index = 0
        self.live = 0

    def alloc(self, n: int) -> Any:
        if self.next_index + n > self.ARENA:
            self.next_index = 0
        start = self.next_index
        self.next_index += n
        self.live += n
        return self._arena[start : start + n]

    def free_segment(self, free_index: Any, *, start_pos: int = 0) -> None:
        assert start_pos % self.page_size == 0, "segment start is not page-aligned"
        self.live -= len(free_index)

    def free(self, free_index: Any) -> None:
        self.live -= len(free_index)


class SGLangRadix:
    """One of SGLang's trees (``kind``, see ``KINDS``; LRU, no metrics, no KV events) through
    the calls its scheduler makes; a :class:`~prefixkv.bench.subjects.Subject`.

    Built over a fake KV allocator (the classic tree with ``RadixCache.create_simulated``,
    the others from ``CacheInitParams`` with the FULL component only). ``page_size`` 16
    matches prefixkv's block size, 1 is SGLang's default; ``block_size`` is what the
    benchmark calls a block (``evict`` counts in it). Token inputs may be a list (converted
    to ``array('q')`` inside the call, as SGLang's scheduler would) or an ``array('q')``.

    * ``insert``: what ``cache_finished_req`` does for a request: the page-aligned key, KV
      indices for it (a view of the allocator's tensor, inside the call), ``insert``, then
      freeing the indices of the tokens already in the tree, so the allocator holds what the
      tree holds.
    * ``match``: ``match_prefix``; returns ``device_prefix_len``. It does not concatenate the
      matched KV indices (the scheduler does that later).
    * ``pin_unpin``: ``inc_lock_ref`` / ``dec_lock_ref`` (with the receipt the unified tree
      requires) on the match's last node.
    * ``evict``: one ``evict`` call; the classic tree builds a heap over *all* evictable
      leaves on every call, then pops until enough tokens are freed.
    """

    can_pin = can_evict = True

    def __init__(self, page_size: int = 16, block_size: int = 16, kind: str = "classic") -> None:
        if page_size < 1 or block_size < 1:
            raise ValueError("page_size and block_size must be >= 1")
        api = load_sglang()
        self._api = api
        self.page_size = page_size
        self.block_size = block_size
        self.version = api.version
        prefix = {"classic": "sglang", "unified": "sglang-rust", "prefixkv": "prefixkv-sglang"}
        self.name = f"{prefix.get(kind, kind)}(page={page_size})"
        self.allocator = _FakeKVAllocator(api.torch, page_size)
        self.cache = _build_cache(api, kind, self.allocator, page_size)

    def native(self, tokens: list[int]) -> array[int]:
        return array("q", tokens)  # what SGLang's scheduler keeps per request

    def insert(self, tokens: Any) -> None:
        ids = tokens if type(tokens) is array else array("q", tokens)
        key = self._api.RadixKey(ids).page_aligned(self.page_size)
        if len(key) == 0:
            return
        values = self.allocator.alloc(len(key))
        result = self.cache.insert(self._api.InsertParams(key=key, value=values))
        if result.prefix_len:
            self.allocator.free_segment(values[: result.prefix_len], start_pos=0)

    def match(self, tokens: Any) -> int:
        return int(self._match(tokens).device_prefix_len)

    def pin(self, tokens: Any) -> Any:
        """The node ``pin_unpin`` locks: the last node of the match (untimed preparation)."""
        return self._match(tokens).last_device_node

    def pin_unpin(self, handle: Any) -> None:
        receipt = self.cache.inc_lock_ref(handle)
        self.cache.dec_lock_ref(handle, receipt.to_dec_params())

    def evict(self, num_blocks: int) -> int:
        """One evict call for ``num_blocks`` blocks' tokens; returns the tokens freed."""
        params = self._api.EvictParams(num_tokens=num_blocks * self.block_size)
        return int(self.cache.evict(params).num_tokens_evicted)

    def _match(self, tokens: Any) -> Any:
        ids = tokens if type(tokens) is array else array("q", tokens)
        return self.cache.match_prefix(self._api.MatchPrefixParams(key=self._api.RadixKey(ids)))

    # --- for checks (benchmarks/peers_check.py), not timed ---------------------------------

    def evictable_size(self) -> int:
        return int(self.cache.evictable_size())

    def protected_size(self) -> int:
        return int(self.cache.protected_size())

    def total_size(self) -> int:
        """Tokens held by the tree (the classic tree walks it; the unified one answers
        ``(full, swa)``)."""
        size = self.cache.total_size()
        return int(size[0] if isinstance(size, tuple) else size)

    def reset(self) -> None:
        self.cache.reset()
        self.allocator.reset()

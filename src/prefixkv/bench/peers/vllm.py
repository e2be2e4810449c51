"""vLLM v1's prefix caching (block hashing + the block-hash lookup) as an index-benchmark
subject, driven through its installed package on CPU (nothing copied from it).

Install with ``benchmarks/install_peers.sh``. vLLM has no tree: a request's full blocks are
hashed once when it arrives (each hash chained over its parent's), and the scheduler then
probes a block-hash -> block map block by block. Fairness notes:

* ``match`` on a list or array includes hashing the prompt; in the engine the hashes exist
  already when the scheduler looks up, which is the ``[native]`` form (a request with its
  hashes), whose match is the lookup alone.
* Like prefixkv's match, a lookup here is not capped at ``len(prompt) - 1`` tokens.
* vLLM has no pin or evict call of its own to compare (blocks are ref-counted by requests and
  evicted as the free queue needs them): those cases are skipped.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any, NamedTuple

from prefixkv.bench.peers.stubs import (
    PeerUnavailable,
    StubModule,
    one_line,
    quiet_import,
    stubbed_imports,
)

__all__ = ["VLLMHashing"]

# Imported by vllm.config's import chain (platforms, reasoning and tool parsers, networking)
# but never called by the prefix-caching code. Each is replaced only when it is not
# installed; benchmarks/install_peers.sh installs only cbor2.
#   aiohttp  - HTTP client (and 7 dependencies of its own).
#   xgrammar, llguidance, partial_json_parser - structured-output/tool parsing (xgrammar
#              needs apache-tvm-ffi and triton).
#   zmq, uvloop, pybase64, cloudpickle, cpuinfo, prometheus_client - engine IPC, event loop,
#              serialisation, CPU detection, metrics.
#   cbor2    - only the "sha256_cbor"/"xxhash_cbor" hash names call it; they are refused
#              (PeerUnavailable) when it is a placeholder.
# msgspec, cachetools and openai_harmony (the oss-harmony package) cannot be replaced
# (subclassed or used in pydantic models at import time): install_peers.sh installs them.
VLLM_STUBS = (
    "aiohttp",
    "xgrammar",
    "llguidance",
    "partial_json_parser",
    "zmq",
    "uvloop",
    "pybase64",
    "cloudpickle",
    "cpuinfo",
    "prometheus_client",
    "cbor2",
)


class _VLLM(NamedTuple):
    """The parts of vLLM the subject uses."""

    torch: Any
    get_hash_fn_by_name: Any
    kv_cache_utils: Any
    BlockPool: Any
    FullAttentionManager: Any
    FullAttentionSpec: Any
    ConstantList: Any
    version: str


def load_vllm() -> _VLLM:
    """Import vLLM's prefix-caching pieces (placeholders for what is missing, see
    ``VLLM_STUBS``). Raises PeerUnavailable with a one-line reason when that fails."""
    try:
        with quiet_import(), stubbed_imports(VLLM_STUBS, clients=("vllm",)):
            import torch
            from vllm.utils.hashing import get_hash_fn_by_name
            from vllm.v1.core import kv_cache_utils
            from vllm.v1.core.block_pool import BlockPool
            from vllm.v1.core.single_type_kv_cache_manager import FullAttentionManager
            from vllm.v1.kv_cache_interface import FullAttentionSpec
            from vllm.v1.utils import ConstantList
    except Exception as exc:
        raise PeerUnavailable(f"vllm not importable: {one_line(exc)}") from exc
    import vllm

    version = getattr(vllm, "__version__", "?")
    return _VLLM(
        torch,
        get_hash_fn_by_name,
        kv_cache_utils,
        BlockPool,
        FullAttentionManager,
        FullAttentionSpec,
        ConstantList,
        version,
    )


class HashedRequest:
    """The fields of ``vllm.v1.request.Request`` that vLLM's block hasher and
    ``BlockPool.cache_full_blocks`` read, for a plain text request (no multimodal features,
    no LoRA, no cache salt, no prompt embeds). A real ``Request`` would add sampling and
    bookkeeping that is not part of prefix caching; its ``all_token_ids`` is the same
    ``ConstantList`` view over the token sequence used here (a list, or an array)."""

    __slots__ = (
        "_all_token_ids",
        "_prompt_embeds_per_block_hashes",
        "all_token_ids",
        "block_hashes",
        "cache_salt",
        "lora_request",
        "mm_features",
        "prompt_embeds",
    )

    def __init__(self, tokens: Sequence[int], constant_list: Any) -> None:
        self._all_token_ids = tokens
        self.all_token_ids = constant_list(tokens)
        self.block_hashes: list[bytes] = []
        self.mm_features: list[Any] = []
        self.lora_request = None
        self.cache_salt = None
        self.prompt_embeds = None
        self._prompt_embeds_per_block_hashes: dict[Any, bytes] = {}

    @property
    def num_tokens(self) -> int:
        return len(self._all_token_ids)


class VLLMHashing:
    """vLLM v1 prefix caching: block hashing plus the block-hash -> block lookup; a
    :class:`~prefixkv.bench.subjects.Subject` (without pin and evict).

    * ``hash_name``: vLLM's ``prefix_caching_hash_algo``, given to ``get_hash_fn_by_name``:
      ``"sha256"`` (the default: pickle + SHA-256) or ``"xxhash"`` (pickle + xxh3-128), also
      ``"sha256_cbor"``/``"xxhash_cbor"``. ``NONE_HASH`` (the chain's seed) is a module global
      in vLLM; each subject keeps its own and re-installs it before hashing, so a sha256 and
      an xxhash subject can live in one process.
    * ``native`` / ``request``: the request with its block hashes, as
      ``Request.update_block_hashes`` computes them on arrival
      (``get_request_block_hasher(block_size, hash_fn)``).
    * ``match``: the lookup the single-group ``UnitaryKVCacheCoordinator`` does,
      ``FullAttentionManager.find_longest_cache_hit`` over the real ``BlockPool``, block by
      block until the first miss; a list or array is hashed first, inside the call.
    * ``insert``: what the KV cache manager does over a request's life: look up the cached
      prefix, ``touch`` it, take new blocks for the rest (``get_new_blocks``, which evicts LRU
      cached blocks when needed), ``cache_full_blocks``, then ``free_blocks`` in reverse,
      leaving them cached and evictable. ``num_blocks`` bounds the pool.
    """

    can_pin = can_evict = False

    def __init__(
        self, block_size: int = 16, hash_name: str = "sha256", *, num_blocks: int = 1 << 16
    ) -> None:
        if block_size < 1:
            raise ValueError("block_size must be >= 1")
        api = load_vllm()
        self._api = api
        self._kcu = api.kv_cache_utils
        self._find_longest_cache_hit = api.FullAttentionManager.find_longest_cache_hit
        self._hash_fn = _hash_function(api, hash_name)
        self.block_size = block_size
        self.hash_name = hash_name
        self.version = api.version
        self.name = f"vllm({hash_name})"
        self._none_hash = _seed_chain(self._kcu, self._hash_fn)
        self._hasher = self._kcu.get_request_block_hasher(block_size, self._hash_fn)
        self._spec = api.FullAttentionSpec(
            block_size=block_size, num_kv_heads=1, head_size=1, dtype=api.torch.float16
        )
        self.num_blocks = num_blocks
        self.reset()

    def reset(self) -> None:
        """A new, empty pool (+1 block: block 0 becomes vLLM's null block)."""
        self.block_pool = self._api.BlockPool(
            num_gpu_blocks=self.num_blocks + 1, enable_caching=True, hash_block_size=self.block_size
        )

    def native(self, tokens: list[int]) -> HashedRequest:
        return self.request(tokens)

    def request(self, tokens: Sequence[int]) -> HashedRequest:
        """A request with its block hashes, as vLLM computes them once on arrival."""
        if self._kcu.NONE_HASH is not self._none_hash:
            self._kcu.NONE_HASH = self._none_hash
        request = HashedRequest(tokens, self._api.ConstantList)
        request.block_hashes.extend(self._hasher(request))
        return request

    def match(self, tokens: Any) -> int:
        request = tokens if type(tokens) is HashedRequest else self.request(tokens)
        return self._lookup(request)[1]

    def insert(self, tokens: Any) -> None:
        request = tokens if type(tokens) is HashedRequest else self.request(tokens)
        num_full = len(request.block_hashes)
        if num_full == 0:
            return
        pool = self.block_pool
        hit_blocks, _ = self._lookup(request)
        pool.touch(hit_blocks)
        blocks = list(hit_blocks)
        if len(blocks) < num_full:
            blocks += pool.get_new_blocks(num_full - len(blocks))
            pool.cache_full_blocks(
                request=request,
                blocks=blocks,
                num_cached_blocks=len(hit_blocks),
                num_full_blocks=num_full,
                block_size=self.block_size,
                kv_cache_group_id=0,
            )
        pool.free_blocks(reversed(blocks))

    def pin(self, tokens: Any) -> Any:
        raise NotImplementedError("vLLM has no pin of its own to compare")

    def pin_unpin(self, handle: Any) -> None:
        raise NotImplementedError("vLLM has no pin of its own to compare")

    def evict(self, num_blocks: int) -> int:
        raise NotImplementedError("vLLM evicts from its free queue, not on request")

    def cached_blocks(self) -> int:
        """Block hashes in the pool's cached map (for checks)."""
        return len(self.block_pool.cached_block_hash_to_block)

    def _lookup(self, request: HashedRequest) -> tuple[list[Any], int]:
        """The cached blocks of ``request``'s prefix and the tokens they cover."""
        (blocks,), hit_tokens = self._find_longest_cache_hit(
            block_hashes=request.block_hashes,
            max_length=request.num_tokens,
            kv_cache_group_ids=[0],
            block_pool=self.block_pool,
            kv_cache_spec=self._spec,
            drop_eagle_block=False,
            alignment_tokens=self.block_size,
        )
        return blocks, int(hit_tokens)


def _hash_function(api: _VLLM, hash_name: str) -> Any:
    try:
        hash_fn = api.get_hash_fn_by_name(hash_name)
    except ValueError as exc:
        raise ValueError(f"unknown vLLM hash name {hash_name!r}: {exc}") from None
    if hash_name.endswith("_cbor") and isinstance(
        getattr(sys.modules[hash_fn.__module__], "cbor2", None), StubModule
    ):
        raise PeerUnavailable(f"vLLM hash {hash_name!r} needs cbor2, which is not installed")
    return hash_fn


def _seed_chain(kcu: Any, hash_fn: Any) -> Any:
    """vLLM's ``init_none_hash`` (its log line about a random xxhash seed silenced); returns
    the seed it installed."""
    vllm_logger = logging.getLogger(kcu.__name__)
    level = vllm_logger.level
    vllm_logger.setLevel(logging.ERROR)
    try:
        kcu.init_none_hash(hash_fn)
    finally:
        vllm_logger.setLevel(level)
    return kcu.NONE_HASH

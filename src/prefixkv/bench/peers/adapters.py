"""Thin adapters that let the index benchmark drive peer prefix caches on CPU.

Two peers, each driven only through its own installed package (nothing of their
source is copied here):

* ``SGLangRadix``: SGLang's classic radix tree,
  ``sglang.srt.mem_cache.radix_cache.RadixCache`` (built with its
  ``create_simulated`` constructor over a fake token-to-KV allocator).
* ``VLLMHashing``: vLLM v1's prefix-caching path: the per-request block hasher
  (``get_request_block_hasher`` + ``hash_block_tokens``), the real
  ``BlockPool`` (block-hash -> block map, free queue / LRU) and the real
  ``FullAttentionManager.find_longest_cache_hit`` lookup.

Every public method takes a plain ``list[int]`` and pays, inside the call, the
conversion the peer needs (``array('q', ...)`` for SGLang's ``RadixKey``, a
request object for vLLM's hasher), because our own index takes a list and pays
its conversion inside the call too.

Install the peers with ``benchmarks/install_peers.sh``. Both packages are
installed with ``--no-deps`` (their full dependency sets pull CUDA torch and
GPU kernels); the few dependencies their import chains really execute are
installed pinned by that script, and the rest are replaced while importing by
the placeholder modules described at ``_stubbed_imports``.

Fairness notes (see also each class's docstring):

* Both engines' schedulers cap a lookup at ``len(prompt) - 1`` tokens (the
  last token must be recomputed for logits). These adapters do not: ``match``
  reports the full cached prefix, like our index's match.
* SGLang's ``match_prefix`` mutates: it refreshes access times along the path
  and splits a node when the match ends inside it.
* vLLM's ``match`` includes hashing the prompt; in the engine the hashes are
  computed once when the request arrives (``hash_blocks``), and the scheduler
  then only does the lookup (``match_hashes``).
"""

from __future__ import annotations

import builtins
import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import types
import warnings
from array import array
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["PeerUnavailable", "SGLangRadix", "VLLMHashing"]


class PeerUnavailable(Exception):
    """A peer system cannot be constructed here; the message is a one-line reason."""


# --------------------------------------------------------------------------
# Import-time placeholders for optional dependencies
# --------------------------------------------------------------------------


class _StubModule(types.ModuleType):
    """Placeholder for a dependency that the peers' import chains import but the
    code we drive never calls.

    Any attribute is another placeholder; calling one with a single callable
    returns that callable unchanged (so ``@triton.jit`` and
    ``@triton.jit(...)`` leave the decorated function as it is); ``X | None``,
    ``X[...]`` and subclassing (as ``object``) work, so module-level annotations
    and class statements evaluate.
    """

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        value = _StubModule(f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and callable(args[0]):
            return args[0]
        return _StubModule(f"{self.__name__}()")

    def __getitem__(self, item: Any) -> Any:
        return self

    def __or__(self, other: Any) -> Any:
        return self

    __ror__ = __or__

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        return (object,)

    def __iter__(self) -> Iterator[Any]:
        return iter(())


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves ``_StubModule`` for the given top-level packages and their
    submodules, but only to imports made by the ``clients`` packages.

    Any other importer (torch, transformers, ...) gets the normal "not
    installed" answer, so their ``try: import triton`` fallbacks still take
    the no-Triton branch while SGLang or vLLM is being imported.
    """

    def __init__(self, tops: frozenset[str], clients: frozenset[str]) -> None:
        self.tops = tops
        self.clients = clients

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname.partition(".")[0] in self.tops and self._client_is_importing():
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def _client_is_importing(self) -> bool:
        frame: types.FrameType | None = sys._getframe(2)
        while frame is not None:
            module = frame.f_globals.get("__name__") or ""
            if module == __name__ or module.partition(".")[0] == "importlib":
                frame = frame.f_back
                continue
            return module.partition(".")[0] in self.clients
        return False

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return _StubModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def _prewarm_availability_checks() -> None:
    """Let torch and transformers record the *real* absence of the stubbed
    packages before placeholders appear in ``sys.modules``.

    Their "is X installed" checks are cached (``functools.cache``/``lru_cache``)
    and some run lazily while SGLang imports; answered during the stub window
    they would say "installed" for good (e.g. transformers would then import
    torchvision image transforms, and torch would believe Triton is present).
    """
    with contextlib.suppress(Exception):
        from torch.utils._triton import has_triton_package

        has_triton_package()
    with contextlib.suppress(Exception):
        from transformers.utils import import_utils as tf_import_utils

        for check in (
            "is_torchvision_available",
            "is_torchvision_v2_available",
            "is_triton_available",
            "is_ipython_available",
        ):
            fn = getattr(tf_import_utils, check, None)
            if fn is not None:
                with contextlib.suppress(Exception):
                    fn()


@contextlib.contextmanager
def _quiet_import() -> Iterator[None]:
    """Silence the peers' import-time chatter (CUDA-only UserWarnings, the
    'Failed to import from vllm._C' log line SGLang triggers)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


@contextlib.contextmanager
def _stubbed_imports(tops: Sequence[str], clients: Sequence[str]) -> Iterator[list[str]]:
    """Import with placeholders for those of ``tops`` that are not installed,
    served only to modules of the ``clients`` packages (see ``_StubFinder``).

    The placeholders exist only inside the ``with`` block and only for the
    clients: an import statement of a stubbed package made by any other module
    (torch, transformers, ...) raises ``ModuleNotFoundError`` as it would
    without the stubs, even after a client has put the placeholder into
    ``sys.modules``. Afterwards the finder and the import guard are removed and
    the placeholder modules are dropped from ``sys.modules`` (the peer modules
    keep their own references), so the rest of the process sees these packages
    as absent. A package that *is* installed is never replaced. Yields the
    list of stubbed names.
    """
    missing = [t for t in tops if t not in sys.modules and importlib.util.find_spec(t) is None]
    if not missing:
        yield []
        return
    _prewarm_availability_checks()
    stub_tops = frozenset(missing)
    client_tops = frozenset(clients)
    finder = _StubFinder(stub_tops, client_tops)
    real_import = builtins.__import__

    def guarded_import(
        name: str,
        globals: dict[str, Any] | None = None,
        locals: Any = None,
        fromlist: Any = (),
        level: int = 0,
    ) -> Any:
        # Once a client has imported a placeholder it sits in sys.modules,
        # where an import statement elsewhere (torch's `try: import triton`)
        # would find it without asking any finder: refuse it to non-clients.
        if level == 0 and name.partition(".")[0] in stub_tops:
            importer = (globals or {}).get("__name__") or ""
            if importer.partition(".")[0] not in client_tops:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, globals, locals, fromlist, level)

    sys.meta_path.insert(0, finder)
    builtins.__import__ = guarded_import  # type: ignore[assignment]
    try:
        yield missing
    finally:
        if builtins.__import__ is guarded_import:
            builtins.__import__ = real_import
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n.partition(".")[0] in finder.tops]:
            if isinstance(sys.modules[name], _StubModule):
                del sys.modules[name]


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------
# SGLang
# --------------------------------------------------------------------------

# Imported by SGLang's import chain (package __init__, sglang.srt.utils, model
# configs, kernels) but never called by RadixCache. Each is replaced only when
# it is not installed; benchmarks/install_peers.sh installs none of them.
#   triton      - GPU kernel compiler (~285 MB wheel); sglang.kernels.* define
#                 @triton.jit kernels at import time.
#   torchvision - PyPI wheels are CUDA builds that do not load against CPU
#                 torch; only multimodal preprocessing uses it.
#   IPython     - notebook display helpers in sglang.utils.
#   aiohttp     - HTTP client of the sglang.lang frontend.
#   tvm_ffi     - apache-tvm-ffi, bindings of the GPU custom all-reduce kernels.
#   sentencepiece      - tokenizer of one model config (InternVL).
#   compressed_tensors - quantization config formats.
#   orjson, pybase64, zmq - JSON / base64 / ZeroMQ of the server and IPC paths.
# msgspec and dill cannot be replaced (SGLang subclasses msgspec.Struct and
# serialises a class with dill at import time): install_peers.sh installs them.
_SGLANG_STUBS = (
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
)

_sglang_api: dict[str, Any] | None = None


def _load_sglang() -> dict[str, Any]:
    global _sglang_api
    if _sglang_api is None:
        try:
            with _quiet_import(), _stubbed_imports(_SGLANG_STUBS, clients=("sglang",)):
                import torch
                from sglang.srt.mem_cache.base_prefix_cache import (
                    EvictParams,
                    InsertParams,
                    MatchPrefixParams,
                )
                from sglang.srt.mem_cache.radix_cache import RadixCache, RadixKey
        except Exception as exc:  # ImportError, or anything an import chain raises
            raise PeerUnavailable(f"sglang not importable: {_one_line(exc)}") from exc
        import sglang

        _sglang_api = {
            "torch": torch,
            "RadixCache": RadixCache,
            "RadixKey": RadixKey,
            "MatchPrefixParams": MatchPrefixParams,
            "InsertParams": InsertParams,
            "EvictParams": EvictParams,
            "version": getattr(sglang, "__version__", "?"),
        }
    return _sglang_api


class _FakeKVAllocator:
    """Stand-in for SGLang's token-to-KV-pool allocator.

    ``RadixCache`` only reads ``.device`` and calls ``free_segment`` (on evict);
    ``alloc`` hands out fresh int64 KV indices the way a request's KV row would
    hold them. ``live`` counts indices handed out and not freed: after every
    adapter call it equals the number of tokens held by the tree.
    """

    def __init__(self, torch: Any, page_size: int) -> None:
        self._torch = torch
        self.device = torch.device("cpu")
        self.page_size = page_size
        self.reset()

    def reset(self) -> None:
        self.next_index = 1  # index 0 is SGLang's padding slot
        self.live = 0

    def alloc(self, n: int) -> Any:
        start = self.next_index
        self.next_index += n
        self.live += n
        return self._torch.arange(start, start + n, dtype=self._torch.int64)

    def free_segment(self, free_index: Any, *, start_pos: int = 0) -> None:
        assert start_pos % self.page_size == 0, "segment start is not page-aligned"
        self.live -= len(free_index)

    def free(self, free_index: Any) -> None:
        self.live -= len(free_index)


class SGLangRadix:
    """SGLang's classic RadixCache (``sglang.srt.mem_cache.radix_cache.RadixCache``).

    Built with ``RadixCache.create_simulated(mock_allocator=..., page_size=...)``
    (LRU eviction, no metrics, no KV events); ``page_size`` 16 matches our block
    size, 1 is SGLang's default.

    Per call, through the same API calls SGLang's scheduler makes:

    * ``insert``: what ``cache_finished_req`` does for a request that matched
      nothing: build ``RadixKey(array('q', tokens)).page_aligned(page_size)``,
      take fresh KV indices for it (int64 tensor from the fake allocator),
      ``insert(InsertParams(key, value))``, then free the indices of the
      ``prefix_len`` tokens that were already in the tree (the duplicates), so
      the allocator holds exactly what the tree holds. The index allocation
      (one ``torch.arange``) is inside the call.
    * ``match``: ``match_prefix(MatchPrefixParams(key=RadixKey(array('q', tokens))))``
      and returns ``device_prefix_len``. SGLang page-aligns the key itself.
      This refreshes ``last_access_time`` along the path and SPLITS the node
      where the match ends mid-node (a structural write), and it does not
      concatenate the matched KV indices (the scheduler does that later).
      No ``len - 1`` cap (SGLang's scheduler passes ``limit=len(prompt) - 1``).
      The ``array('q', tokens)`` conversion dominates long matches;
      ``match_array`` skips it, as the engine (which holds arrays) does.
    * ``lock``/``unlock``: ``inc_lock_ref``/``dec_lock_ref`` on the match's
      ``last_device_node``; the handle is that node.
    * ``evict``: one ``evict(EvictParams(num_tokens))`` call; SGLang builds a
      heap over *all* evictable leaves on every call, then pops until enough
      tokens are freed, re-pushing parents that became leaves.
    """

    def __init__(self, page_size: int = 16) -> None:
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        api = _load_sglang()
        self._torch = api["torch"]
        self._RadixKey = api["RadixKey"]
        self._MatchPrefixParams = api["MatchPrefixParams"]
        self._InsertParams = api["InsertParams"]
        self._EvictParams = api["EvictParams"]
        self.page_size = page_size
        self.version = api["version"]
        self.name = f"sglang-radix(page={page_size})"
        self.allocator = _FakeKVAllocator(self._torch, page_size)
        self.cache = api["RadixCache"].create_simulated(
            mock_allocator=self.allocator, page_size=page_size
        )

    def insert(self, tokens: list[int]) -> None:
        key = self._RadixKey(array("q", tokens)).page_aligned(self.page_size)
        n = len(key)
        if n == 0:
            return
        values = self.allocator.alloc(n)
        result = self.cache.insert(self._InsertParams(key=key, value=values))
        if result.prefix_len:
            self.allocator.free_segment(values[: result.prefix_len], start_pos=0)

    def match(self, tokens: list[int]) -> int:
        result = self.cache.match_prefix(
            self._MatchPrefixParams(key=self._RadixKey(array("q", tokens)))
        )
        return int(result.device_prefix_len)

    def match_array(self, token_ids: array[int]) -> int:
        """``match`` on an ``array('q')`` the caller already holds.

        SGLang's scheduler keeps a request's tokens as ``array('q')``
        (``Req.full_untruncated_fill_ids``), so in the engine a lookup does not
        pay the list -> array conversion that ``match`` pays (about 15 ns per
        token, i.e. most of a long match). For reference timings only.
        """
        result = self.cache.match_prefix(self._MatchPrefixParams(key=self._RadixKey(token_ids)))
        return int(result.device_prefix_len)

    def lock(self, tokens: list[int]) -> object:
        result = self.cache.match_prefix(
            self._MatchPrefixParams(key=self._RadixKey(array("q", tokens)))
        )
        node = result.last_device_node
        self.cache.inc_lock_ref(node)
        return node

    def unlock(self, handle: object) -> None:
        self.cache.dec_lock_ref(handle)

    def evict(self, num_tokens: int) -> int:
        return int(self.cache.evict(self._EvictParams(num_tokens=num_tokens)).num_tokens_evicted)

    def evictable_size(self) -> int:
        return int(self.cache.evictable_size())

    def protected_size(self) -> int:
        return int(self.cache.protected_size())

    def total_size(self) -> int:
        """Tokens held by the tree (walks it; for checks, not for timing)."""
        return int(self.cache.total_size())

    def reset(self) -> None:
        self.cache.reset()
        self.allocator.reset()


# --------------------------------------------------------------------------
# vLLM
# --------------------------------------------------------------------------

# Imported by vllm.config's import chain (platforms, reasoning and tool parsers,
# networking) but never called by the prefix-caching code. Each is replaced only
# when it is not installed; benchmarks/install_peers.sh installs only cbor2.
#   aiohttp  - HTTP client (and 7 dependencies of its own).
#   xgrammar, llguidance, partial_json_parser - structured-output/tool parsing
#              (xgrammar needs apache-tvm-ffi and triton).
#   zmq, uvloop, pybase64, cloudpickle, cpuinfo, prometheus_client - engine
#              IPC, event loop, serialisation, CPU detection, metrics.
#   cbor2    - only the "sha256_cbor"/"xxhash_cbor" hash names call it; they are
#              refused (PeerUnavailable) when it is a placeholder.
# msgspec, cachetools and openai_harmony (the oss-harmony package) cannot be
# replaced (subclassed or used in pydantic models at import time):
# install_peers.sh installs them.
_VLLM_STUBS = (
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

_vllm_api: dict[str, Any] | None = None


def _load_vllm() -> dict[str, Any]:
    global _vllm_api
    if _vllm_api is None:
        try:
            with _quiet_import(), _stubbed_imports(_VLLM_STUBS, clients=("vllm",)):
                import torch
                from vllm.utils.hashing import get_hash_fn_by_name
                from vllm.v1.core import kv_cache_utils
                from vllm.v1.core.block_pool import BlockPool
                from vllm.v1.core.single_type_kv_cache_manager import FullAttentionManager
                from vllm.v1.kv_cache_interface import FullAttentionSpec
                from vllm.v1.utils import ConstantList
        except Exception as exc:
            raise PeerUnavailable(f"vllm not importable: {_one_line(exc)}") from exc
        import vllm

        _vllm_api = {
            "torch": torch,
            "get_hash_fn_by_name": get_hash_fn_by_name,
            "kv_cache_utils": kv_cache_utils,
            "BlockPool": BlockPool,
            "FullAttentionManager": FullAttentionManager,
            "FullAttentionSpec": FullAttentionSpec,
            "ConstantList": ConstantList,
            "version": getattr(vllm, "__version__", "?"),
        }
    return _vllm_api


class _HasherRequest:
    """The fields of ``vllm.v1.request.Request`` that vLLM's block hasher and
    ``BlockPool.cache_full_blocks`` read, for a plain text request (no
    multimodal features, no LoRA, no cache salt, no prompt embeds).

    Building a real ``Request`` would add SamplingParams/request bookkeeping
    that is not part of prefix caching; its ``all_token_ids`` is the same
    ``ConstantList`` view over the token list used here.
    """

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

    def __init__(self, tokens: list[int], constant_list: Any) -> None:
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
    """vLLM v1 prefix caching: block hashing plus the block-hash -> block lookup.

    * ``hash_name``: vLLM's ``prefix_caching_hash_algo`` name, passed to
      ``vllm.utils.hashing.get_hash_fn_by_name``: ``"sha256"`` (vLLM's
      default: pickle + SHA-256), ``"xxhash"`` (pickle + xxh3-128), also
      ``"sha256_cbor"``/``"xxhash_cbor"``. The engine seeds the chain with
      ``init_none_hash(hash_fn)``; for the xxhash variants vLLM picks a random
      per-process seed unless PYTHONHASHSEED is set (and logs a warning).
      ``NONE_HASH`` is a module global in vLLM; each adapter keeps its own and
      re-installs it before hashing, so a sha256 and an xxhash adapter can
      live in one process.
    * ``hash_blocks``: ``get_request_block_hasher(block_size, hash_fn)`` applied
      to a request, as ``Request.update_block_hashes`` does on arrival: one
      ``hash_block_tokens(hash_fn, parent_hash, block_tokens, extra_keys)`` per
      full block, chained over the parent hash. The request is a minimal
      stand-in (``_HasherRequest``) wrapping the list without copying.
    * ``match``: ``hash_blocks`` then the lookup the single-group
      ``UnitaryKVCacheCoordinator`` does:
      ``FullAttentionManager.find_longest_cache_hit(block_hashes, max_length,
      [0], block_pool, FullAttentionSpec, drop_eagle_block=False,
      alignment_tokens=block_size)``, which probes the real ``BlockPool``
      (``get_cached_block`` -> ``BlockHashToBlockMap``) block by block until
      the first miss. ``max_length`` is ``len(tokens)``, not the engine's
      ``len - 1``. It does not touch (ref-count) the hit blocks.
      ``match_hashes`` is the lookup alone, on precomputed hashes.
    * ``insert``: what the KV cache manager does over a request's life:
      hash, look up the cached prefix, ``touch`` the hit blocks, take new
      blocks for the rest from the pool (``get_new_blocks``, which evicts LRU
      cached blocks when the free queue's head holds them), register them with
      ``cache_full_blocks``, then free the request's blocks in reverse order
      (``free_blocks``), leaving them cached and evictable. Only full blocks
      are cached (like vLLM); a trailing partial block is ignored.
      ``num_blocks`` bounds the pool (vLLM's ``num_gpu_blocks``); when all
      blocks are cached, inserting more evicts the least recently freed ones.
    """

    def __init__(
        self, block_size: int = 16, hash_name: str = "sha256", *, num_blocks: int = 1 << 16
    ) -> None:
        if block_size < 1:
            raise ValueError("block_size must be >= 1")
        api = _load_vllm()
        kcu = api["kv_cache_utils"]
        self._kcu = kcu
        self._ConstantList = api["ConstantList"]
        self._find_longest_cache_hit = api["FullAttentionManager"].find_longest_cache_hit
        try:
            hash_fn = api["get_hash_fn_by_name"](hash_name)
        except ValueError as exc:
            raise ValueError(f"unknown vLLM hash name {hash_name!r}: {exc}") from None
        if hash_name.endswith("_cbor") and isinstance(
            getattr(sys.modules[hash_fn.__module__], "cbor2", None), _StubModule
        ):
            raise PeerUnavailable(f"vLLM hash {hash_name!r} needs cbor2, which is not installed")
        self.block_size = block_size
        self.hash_name = hash_name
        self.version = api["version"]
        self.name = f"vllm-hash({hash_name},block={block_size})"
        self._hash_fn = hash_fn
        # vLLM logs a warning for a random (xxhash) seed; keep it quiet here.
        vllm_logger = logging.getLogger(kcu.__name__)
        level = vllm_logger.level
        vllm_logger.setLevel(logging.ERROR)
        try:
            kcu.init_none_hash(hash_fn)
        finally:
            vllm_logger.setLevel(level)
        self._none_hash = kcu.NONE_HASH
        self._hasher = kcu.get_request_block_hasher(block_size, hash_fn)
        self._spec = api["FullAttentionSpec"](
            block_size=block_size, num_kv_heads=1, head_size=1, dtype=api["torch"].float16
        )
        self._BlockPool = api["BlockPool"]
        self.num_blocks = num_blocks
        self._new_pool()

    def _new_pool(self) -> None:
        # +1: block 0 becomes vLLM's null block.
        self.block_pool = self._BlockPool(
            num_gpu_blocks=self.num_blocks + 1,
            enable_caching=True,
            hash_block_size=self.block_size,
        )

    def request(self, tokens: list[int]) -> _HasherRequest:
        """A request with its block hashes, as vLLM computes them once on arrival."""
        if self._kcu.NONE_HASH is not self._none_hash:
            self._kcu.NONE_HASH = self._none_hash
        request = _HasherRequest(tokens, self._ConstantList)
        request.block_hashes.extend(self._hasher(request))
        return request

    def hash_blocks(self, tokens: list[int]) -> list[bytes]:
        return self.request(tokens).block_hashes

    def match_hashes(self, block_hashes: list[bytes], num_tokens: int) -> int:
        """The scheduler-side lookup alone, on hashes from ``hash_blocks``."""
        _, hit_length = self._find_longest_cache_hit(
            block_hashes=block_hashes,
            max_length=num_tokens,
            kv_cache_group_ids=[0],
            block_pool=self.block_pool,
            kv_cache_spec=self._spec,
            drop_eagle_block=False,
            alignment_tokens=self.block_size,
        )
        return int(hit_length)

    def match(self, tokens: list[int]) -> int:
        return self.match_hashes(self.hash_blocks(tokens), len(tokens))

    def insert(self, tokens: list[int]) -> None:
        self.insert_request(self.request(tokens))

    def insert_request(self, request: _HasherRequest) -> None:
        """``insert`` on a request from ``request`` (its hashes already computed)."""
        tokens = request.all_token_ids
        num_full = len(request.block_hashes)
        if num_full == 0:
            return
        pool = self.block_pool
        (hit_blocks,), _ = self._find_longest_cache_hit(
            block_hashes=request.block_hashes,
            max_length=len(tokens),
            kv_cache_group_ids=[0],
            block_pool=pool,
            kv_cache_spec=self._spec,
            drop_eagle_block=False,
            alignment_tokens=self.block_size,
        )
        num_hit = len(hit_blocks)
        if num_hit == num_full:
            pool.touch(hit_blocks)
            pool.free_blocks(reversed(hit_blocks))
            return
        pool.touch(hit_blocks)
        blocks = list(hit_blocks) + pool.get_new_blocks(num_full - num_hit)
        pool.cache_full_blocks(
            request=request,
            blocks=blocks,
            num_cached_blocks=num_hit,
            num_full_blocks=num_full,
            block_size=self.block_size,
            kv_cache_group_id=0,
        )
        pool.free_blocks(reversed(blocks))

    def cached_blocks(self) -> int:
        """Number of block hashes in the pool's cached map."""
        return len(self.block_pool.cached_block_hash_to_block)

    def reset(self) -> None:
        self._new_pool()

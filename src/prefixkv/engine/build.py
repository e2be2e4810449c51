"""The composition root: one frozen record of settings, built once and in order into the
model, its kernels, the KV geometry, the cache and the runner.

    EngineSettings -> load (weights, tokenizer) -> kernels (linear layers) -> KVGeometry
      -> attention (batch runner's kernel, or the serial runner for a model it cannot run)
      -> cache (RAM, null, or RAM with tiers below, named by how the KV is computed)
      -> Engine -> runner (serial or batch, its step callback given at construction)

Nothing is built twice or thrown away: ``prefixkv serve``/``chat`` and
``Engine.from_pretrained`` all come through :func:`build`.
"""

from __future__ import annotations

import functools
import gc
import logging
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from prefixkv.cache.layout import KVGeometry, KVLayout
from prefixkv.cache.null import NullCache
from prefixkv.cache.paged import DEFAULT_CAPACITY_BYTES, PrefixKVCache
from prefixkv.cache.protocol import BlockStore
from prefixkv.engine.activations import activations as activations_named
from prefixkv.engine.batch.records import DEFAULT_LIMITS, BatchLimits, StepReport
from prefixkv.engine.embedding import input_rows, install_embedding, rounds
from prefixkv.engine.engine import Engine
from prefixkv.engine.gguf_blocks import RawWeight
from prefixkv.engine.gguf_load import widen
from prefixkv.engine.kvbridge import UnsupportedModelError, layout_of
from prefixkv.engine.linear import formats_of, kernel_of
from prefixkv.engine.linear import linear_kernel as choose_linear
from prefixkv.engine.loader import LoadedModel, open_model
from prefixkv.engine.mapped import copy_mapped_weights
from prefixkv.engine.native_linear import NativeLinear
from prefixkv.engine.role import Runner
from prefixkv.engine.tied_embedding import tied_head
from prefixkv.engine.weights import ExactWeights, WeightFormat, weight_format
from prefixkv.heap import release_free_heap
from prefixkv.index.policy import EvictionPolicy
from prefixkv.models.family import text_config
from prefixkv.threads import current_threads
from prefixkv.tokens import TokenBytes

if TYPE_CHECKING:
    from prefixkv.engine.batch.canary import Canary
    from prefixkv.tiers.key import TierKey

log = logging.getLogger("prefixkv.engine")

EXACT_LINEAR = frozenset({"native", "onednn"})
"""Linear kernels whose every output is one summation order whatever the row count."""


@dataclass(frozen=True)
class TierSettings:
    """Tiers below RAM (the ``[tiers]`` extra): a disk directory, a Redis URL, or both."""

    disk_dir: str | None = None
    disk_bytes: int = 16 << 30
    redis_url: str | None = None
    compression: str = "none"
    key: TierKey | None = None
    """Seals records and keys block names (see :mod:`prefixkv.tiers.seal`)."""
    insecure: bool = False
    """Allow a shared store without a key (see :mod:`prefixkv.tiers.policy`)."""


@dataclass(frozen=True)
class EngineSettings:
    """Everything that decides what is built. ``cache``: ``ram`` (a PrefixKVCache of
    ``cache_bytes``, with ``tiers`` below it if given) or ``none`` (a NullCache: a pool of
    ``cache_bytes`` for running KV under the batch runner, no pool under the serial one).
    ``backend``: ``batch`` (falls back to ``serial``, with a warning, for a model the batch
    runner cannot run) or ``serial``. ``threads``: the cores the runner computes on (named
    in tier records; default: the building thread's)."""

    model: str = "smollm2"
    device: str = "cpu"
    dtype: torch.dtype | None = None
    model_cache_dir: Path | None = None
    linear_kernel: str = "auto"
    weights: str = "auto"
    """What the native linear kernel streams: ``auto``, ``fp32`` or ``bf16`` (see
    :mod:`prefixkv.engine.weights`)."""
    activations: str = "fp32"
    """What it multiplies them with: ``fp32`` (exact) or ``q8`` (see
    :mod:`prefixkv.engine.activations`)."""
    cache: Literal["ram", "none"] = "ram"
    cache_bytes: int = DEFAULT_CAPACITY_BYTES
    block_size: int = 16
    eviction_policy: EvictionPolicy | None = None
    """None: LRU (see :mod:`prefixkv.index.policy`)."""
    tenant_share: float | None = None
    tiers: TierSettings | None = None
    backend: Literal["batch", "serial"] = "serial"
    attention_kernel: str = "auto"
    limits: BatchLimits = field(default=DEFAULT_LIMITS)
    threads: int | None = None
    canary_rate: float = 0.0
    """The batch runner's exactness canary (see :mod:`prefixkv.engine.batch.canary`): the
    fraction of cache-served requests whose prefix is recomputed and compared; 0: none."""


@dataclass(frozen=True)
class Built:
    """What :func:`build` made. ``attention``: how the KV is computed, as the tier records'
    fingerprint names it (``batch:<kernel>`` or ``serial:<the model's own>``)."""

    engine: Engine
    runner: Runner
    geometry: KVGeometry
    attention: str
    canary: Canary = field(default_factory=lambda: _no_canary())
    """The batch runner's exactness canary (the serial runner has none)."""


def build(
    settings: EngineSettings, on_step: Callable[[StepReport], None] = lambda report: None
) -> Built:
    """Load the model ``settings`` name, then :func:`assemble` the rest; ``on_step`` is the
    runner's step callback. Raises ModelNotFoundError, ValueError (a cache too small for a
    block, an unknown kernel name, a tier option that cannot work), RuntimeError (a linear
    kernel that cannot run these weights; NativeUnavailable, a RuntimeError, for
    ``attention_kernel="native"`` where it cannot run)."""
    loaded = load_kernels(settings)
    return assemble(settings, loaded.model, loaded.tokenizer, loaded.name, on_step)


def assemble(
    settings: EngineSettings,
    model: Any,
    tokenizer: Any,
    name: str,
    on_step: Callable[[StepReport], None] = lambda report: None,
) -> Built:
    """From a loaded model (its linear kernel installed): the geometry, the attention, the
    cache, the Engine and its runner. Raises as :func:`build` does."""
    geometry = KVGeometry(layout_of(model.config, _dtype(model)), settings.block_size)
    attention = choose_attention(settings, model, geometry.layout)
    threads = settings.threads or current_threads()
    cache = make_cache(settings, geometry, model, attention, threads)
    if attention.startswith("serial:"):
        engine = Engine(model, tokenizer, cache, name=name, on_step=on_step)
        if settings.canary_rate:
            log.warning("the exactness canary runs on the batch runner only: it is off")
        return Built(engine, engine.serial, geometry, attention)
    engine = Engine(model, tokenizer, cache, name=name)
    from prefixkv.engine.batch.runner import BatchRunner

    kernel = attention.removeprefix("batch:")  # resolved already: no second probe of "auto"
    canary = make_canary(settings, model, geometry, attention, threads)
    runner = BatchRunner(engine, settings.limits, on_step, attention_kernel=kernel, canary=canary)
    return Built(engine, runner, geometry, attention, canary)


def _no_canary() -> Canary:
    from prefixkv.engine.batch.canary import NO_CANARY

    return NO_CANARY


def make_canary(
    settings: EngineSettings, model: Any, geometry: KVGeometry, attention: str, threads: int
) -> Canary:
    """The exactness canary ``settings.canary_rate`` asks for. Its log names blocks as the
    tiers do (the model's fingerprint is computed at the first mismatch, not before)."""
    from prefixkv.engine.batch.canary import NO_CANARY, SampledCanary

    if settings.canary_rate == 0.0:
        return NO_CANARY
    linear = kernel_of(model)
    if linear not in EXACT_LINEAR or attention != "batch:native":
        # PyTorch's own GEMM and attention round a row differently with the batch around it
        # (tests/engine/batch/test_canary.py shows it): every check would be a false alarm.
        log.warning(
            "the exactness canary is off: it needs the native attention kernel and the "
            "native or oneDNN linear kernel (bit-exact whatever the batch), not %s / %s",
            attention.removeprefix("batch:"),
            linear,
        )
        return NO_CANARY

    @functools.cache
    def namer() -> Any:
        from prefixkv.engine.fingerprint import arithmetic, model_fingerprint
        from prefixkv.tiers.naming import BlockNamer

        computed = arithmetic(model, attention, threads)
        fingerprint = model_fingerprint(model, geometry.layout, computed)
        return BlockNamer(fingerprint, geometry.block_size)

    def names(tokens: TokenBytes, namespace: Hashable, count: int) -> list[str]:
        return [name.hex() for name in namer().names(tokens, namespace, count)]

    return SampledCanary(settings.canary_rate, names)


def load_kernels(settings: EngineSettings) -> LoadedModel:
    """The model loaded offline with its linear layers on ``settings.linear_kernel`` and its
    input embedding held as ``settings.weights`` asks (:mod:`prefixkv.engine.embedding`).

    A GGUF's linear layers and embedding are packed from the file's rows, a bf16 folder's
    from its bf16 weights (:func:`prefixkv.engine.loader.open_model`), one layer at a time;
    a kernel other than the native one gets float32 weights (:func:`widen`), as does
    whatever stays unpacked."""
    opened = open_model(
        settings.model,
        device=settings.device,
        dtype=settings.dtype,
        cache_dir=settings.model_cache_dir,
    )
    model, rows = opened.model, opened.rows
    weights = weight_format(settings.weights, rows, model)
    kernel = choose_linear(settings.linear_kernel, model, weights,
                           activations_named(settings.activations))  # fmt: skip
    table = input_rows(model, rows)
    tied = tied_head(model)
    if kernel.name != NativeLinear.name:
        widen(model, rows)  # the other kernels compute on float32 weights
    swapped = kernel.install(model)
    # After the linear layers: a tied head has its own packed copy by then, which the
    # embedding then reads where it holds the table's values (one copy, not two).
    embedding = install_embedding(model, settings.weights, rows, tied)
    widen(model, rows)  # what no kernel packed (an embedding kept float32)
    _notice_converted(weights, table if embedding == "bf16" else None)
    log.info("linear layers: %s (%d swapped; weights %s); input embedding %s", kernel.name,
             swapped, formats_of(model), embedding)  # fmt: skip
    del weights, rows
    loaded = replace(opened, rows={})  # the rows' file mapping goes with the last reference
    del opened
    gc.collect()
    # The weights left unpacked would keep the whole checkpoint file mapped and resident
    # (see prefixkv.engine.mapped); packing left the plain copies freed on the C heap
    # (see prefixkv.heap). benchmarks/load_memory.py measures both.
    copy_mapped_weights(model)
    release_free_heap()
    return loaded


def _notice_converted(weights: WeightFormat, table: RawWeight | None) -> None:
    """One log line naming the file tensors ``auto`` de-quantized to bf16 (per GGML type),
    if any: the linear layers' (``weights``) and the embedding's (``table``, its rows if
    held as bf16)."""
    if not isinstance(weights, ExactWeights):
        return
    converted = Counter(weights.converted)
    if table is not None and rounds(table.format):
        converted[table.format] += 1
    if converted:
        log.info("GGUF tensors in types the native kernels do not read, de-quantized to "
                 "bf16 at load: %s (a precision change only where a value is not a bf16 "
                 "value)", ", ".join(f"{f} {n}" for f, n in sorted(converted.items())))  # fmt: skip


def choose_attention(settings: EngineSettings, model: Any, layout: KVLayout) -> str:
    """``batch:<kernel>`` for the batch runner with the kernel ``attention_kernel`` resolves
    to, or ``serial:<the model's own>`` (asked for, or the fallback, with a warning, for a
    model the batch runner cannot run). NativeUnavailable for ``native`` where it cannot
    run."""
    from prefixkv.engine.batch import attention, kernels
    from prefixkv.engine.fingerprint import serial_attention

    if settings.backend == "serial":
        return serial_attention(model)
    try:
        attention.check_supported(model)  # nothing else uses the model yet: no lock needed
    except UnsupportedModelError as exc:
        log.warning("%s; serving one request at a time", exc)
        return serial_attention(model)
    heads = int(text_config(model.config).num_attention_heads)  # a multimodal model's decoder
    kernel = kernels.attention_kernel(
        settings.attention_kernel, heads, layout.num_kv_heads, layout.dtype, _device(model)
    )
    return f"batch:{kernel.name}"


def make_cache(
    settings: EngineSettings,
    geometry: KVGeometry,
    model: Any,
    attention: str,
    threads: int,
) -> BlockStore:
    """The cache ``settings`` describe over ``geometry``; tier records are named by the
    weights and by how ``attention`` computes the KV on ``threads`` threads. ValueError for
    ``cache_bytes`` short of one block, or a tier option that cannot work."""
    layout, size, device = geometry.layout, geometry.block_size, settings.device
    if settings.cache_bytes < geometry.block_bytes:  # whatever the cache: it is the KV pool
        raise ValueError(
            f"cache_bytes={settings.cache_bytes} holds no block: one block of {size} tokens "
            f"takes {geometry.block_bytes} bytes for this layout"
        )
    if settings.cache == "none":
        # A pool of the same size still holds running requests' KV when batching.
        capacity = settings.cache_bytes if attention.startswith("batch:") else 0
        return NullCache(layout, size, device, capacity_bytes=capacity)
    policy, share = settings.eviction_policy, settings.tenant_share
    ram = PrefixKVCache(
        layout, size, settings.cache_bytes, device, policy=policy, tenant_share=share
    )
    tiers = settings.tiers
    if tiers is None:
        return ram
    from prefixkv.engine.fingerprint import arithmetic, model_fingerprint
    from prefixkv.tiers.build import build_tiered

    computed = arithmetic(model, attention, threads)
    return build_tiered(
        ram,
        model_fingerprint(model, layout, computed),
        disk_dir=tiers.disk_dir,
        disk_bytes=tiers.disk_bytes,
        redis_url=tiers.redis_url,
        compression=tiers.compression,
        key=tiers.key,
        insecure=tiers.insecure,
    )


def _dtype(model: Any) -> torch.dtype:
    dtype: torch.dtype = next(model.parameters()).dtype
    return dtype


def _device(model: Any) -> torch.device:
    device: torch.device = next(model.parameters()).device
    return device

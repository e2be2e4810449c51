"""Case (a) of ``prefixkv bench tiers``: what it costs to get 1,000 tokens of KV back from
RAM, disk and Redis, against recomputing them, on the real engine in one process.

Per round, in this order: *recompute* is a prefill of the prefix's tokens (the engine over a
NullCache: ``next_token_logits``, which runs the model over every token); *linear* is the
same tokens through the model's linear layers alone (the GEMM time a prefill cannot go
below on this CPU); *ram* is a lookup of the cached prefix plus the copy of its KV into a
preallocated buffer (what the engine does before it prefills the rest); *disk*, *disk-cold*
and *redis* empty RAM (``reset()``), then time ``TieredCache.promote`` (read, verify,
decode, put back into RAM) plus the same lookup and copy. *disk* reads files the page cache
holds (they were just written and read); *disk-cold* first drops each file's pages
(``posix_fadvise(DONTNEED)`` after a sync), so it reads the device, which in a VM may still
be the host's cache. *disk-sealed* and *redis-sealed* are *disk* and *redis* with records
sealed by a tier key (AES-256-GCM, keyed names): what sealing costs a restore; the others
keep checksummed records (*disk*: a private directory; *redis*: ``insecure``, the bench's
own server). Every restore is checked bit for bit against the KV in RAM, and its GB/s
compared with one large memory copy measured in the same run.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from prefixkv.bench import workloads
from prefixkv.bench.stats import percentile
from prefixkv.cache.paged import PrefixKVCache
from prefixkv.engine.engine import Engine
from prefixkv.engine.linear import LinearLayer, linear_layers
from prefixkv.tiers.build import build_tiered
from prefixkv.tiers.key import TierKey
from prefixkv.tiers.tiered import TieredCache

TARGETS = {"disk": 10.0, "redis": 5.0}
"""Restore at least this many times faster than recomputing the same tokens (the issue's)."""


@dataclass
class Context:
    """What every in-process case shares."""

    engine: Engine  # over a NullCache: recomputes everything
    fingerprint: bytes
    block_size: int
    tmp: Path  # disk tiers live under it
    redis_url: str | None  # None: no Redis (the reason is in ``notes``)
    flush_redis: Callable[[], None]
    memcpy_bps: float  # bytes copied per second by one large tensor copy
    notes: list[str]
    key: TierKey  # seals the *-sealed paths (and the bench's Redis settings)

    def hot(self, capacity_bytes: int) -> PrefixKVCache:
        return PrefixKVCache(self.engine.layout, self.block_size, capacity_bytes)


def measure_memcpy(mib: int = 256, repeats: int = 5) -> float:
    """Bytes per second of ``dst.copy_(src)`` over ``mib`` MiB (best of ``repeats``): what one
    copy of KV through memory can reach on this machine."""
    src = torch.ones(mib << 18, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return src.numel() * 4 / best


def prefix_tokens(engine: Engine, count: int, block_size: int) -> list[int]:
    """``count`` tokens of document text, rounded up to whole blocks."""
    count = -(-count // block_size) * block_size
    ids: list[int] = []
    seed = 0
    while len(ids) < count:
        ids += list(engine.tokenizer(workloads.document(7000 + seed, 40))["input_ids"])
        seed += 1
    return ids[:count]


def drop_page_cache(root: Path) -> bool:
    """Drop the page cache's copy of every record file under ``root``; False where the OS
    cannot (no ``posix_fadvise``)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    os.sync()  # dirty pages are not dropped
    for path in root.rglob("*.kv"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


class _Path:
    """One way of getting the prefix's KV into ``buf``, timed."""

    def __init__(self, name: str, run: Callable[[], dict[str, float]]) -> None:
        self.name = name
        self.run = run
        self.seconds: list[float] = []
        self.parts: dict[str, list[float]] = {}

    def measure(self) -> None:
        start = time.perf_counter()
        parts = self.run()
        self.seconds.append(time.perf_counter() - start)
        for key, value in parts.items():
            self.parts.setdefault(key, []).append(value)


def _copy_out(cache: Any, tokens: list[int], buf: torch.Tensor) -> None:
    """Open ``tokens`` (promoting from the tiers first) and copy their blocks into ``buf``."""
    table = cache.open(tokens)
    try:
        if table.cached_tokens != len(tokens):
            raise RuntimeError(f"open found {table.cached_tokens} of {len(tokens)} tokens")
        cache.pool.gather_into(table.blocks, buf)
    finally:
        cache.close(table)


def _filled(source: PrefixKVCache, tokens: list[int], cache: TieredCache) -> TieredCache:
    """``cache`` with the prefix's KV (from ``source``) stored and written to its tiers."""
    with source.lookup(tokens) as lease:
        cache.hot.store(tokens, lease.kv)  # into RAM, and written through to the tiers
    cache.flush()
    return cache


def _from_tier(
    cache: TieredCache, tier: str, tokens: list[int], buf: torch.Tensor, cold: Path | None
) -> Callable[[], dict[str, float]]:
    blocks = len(tokens) // cache.block_size
    counters = next(i for i, t in enumerate(cache.tiers) if t.name == tier)

    def run() -> dict[str, float]:
        cache.reset()
        if cold is not None:
            drop_page_cache(cold)
        read_before = cache.tiers[counters].counters().read_seconds
        start = time.perf_counter()
        found = cache.promote(tokens)
        promoted = time.perf_counter() - start
        if found.get(tier) != blocks:
            raise RuntimeError(f"{tier} restored {found} of {blocks} blocks")
        _copy_out(cache, tokens, buf)
        read = cache.tiers[counters].counters().read_seconds - read_before
        return {"promote": promoted, "tier_read": read}

    return run


def _from_ram(
    cache: PrefixKVCache, tokens: list[int], buf: torch.Tensor
) -> Callable[[], dict[str, float]]:
    def run() -> dict[str, float]:
        _copy_out(cache, tokens, buf)
        return {}

    return run


def _kv_seconds(engine: Engine, tokens: list[int]) -> Callable[[], dict[str, float]]:
    def run() -> dict[str, float]:
        engine.next_token_logits(tokens)
        return {}

    return run


def run_restore(ctx: Context, count: int, repeats: int, bar: Any) -> list[dict[str, Any]]:
    """Rows of case (a): recompute, then each restore path, ``repeats`` rounds."""
    engine, size = ctx.engine, ctx.block_size
    tokens = prefix_tokens(engine, count, size)
    layout = engine.layout
    buf = torch.empty(
        (layout.num_layers, 2, layout.num_kv_heads, len(tokens), layout.head_dim),
        dtype=layout.dtype,
    )
    capacity = (len(tokens) // size + 2) * layout.block_bytes(size)
    disk_dir = ctx.tmp / "restore-disk"
    disk = build_tiered(ctx.hot(capacity), ctx.fingerprint, disk_dir=disk_dir, disk_bytes=1 << 40)
    engine.with_cache(cast(Any, disk)).generate(
        tokens, max_tokens=1
    )  # computed once, written to disk
    disk.flush()
    reference = torch.empty_like(buf)
    _copy_out(disk.hot, tokens, reference)
    caches: list[TieredCache] = [disk]
    paths = [
        _Path("recompute", _kv_seconds(engine, tokens)),
        _Path("linear", _linear_seconds(engine.model, len(tokens))),
        _Path("ram", _from_ram(disk.hot, tokens, buf)),
        _Path("disk", _from_tier(disk, "disk", tokens, buf, None)),
    ]
    if hasattr(os, "posix_fadvise"):
        paths.append(_Path("disk-cold", _from_tier(disk, "disk", tokens, buf, disk_dir)))
    else:
        ctx.notes.append("restore disk-cold skipped: no posix_fadvise on this OS")
    sealed = _filled(
        disk.hot,
        tokens,
        build_tiered(ctx.hot(capacity), ctx.fingerprint, key=ctx.key,
                     disk_dir=ctx.tmp / "restore-disk-sealed", disk_bytes=1 << 40),
    )  # fmt: skip
    caches.append(sealed)
    paths.append(_Path("disk-sealed", _from_tier(sealed, "disk", tokens, buf, None)))
    if ctx.redis_url is not None:
        ctx.flush_redis()
        for name, key in (("redis", None), ("redis-sealed", ctx.key)):
            redis = build_tiered(
                ctx.hot(capacity), ctx.fingerprint, redis_url=ctx.redis_url, key=key,
                insecure=key is None,
            )  # fmt: skip
            caches.append(_filled(disk.hot, tokens, redis))
            paths.append(_Path(name, _from_tier(redis, "redis", tokens, buf, None)))
    exact: dict[str, bool] = {}
    try:
        for _ in range(repeats):
            for path in paths:
                buf.zero_()
                path.measure()
                if path.name not in ("recompute", "linear"):
                    exact[path.name] = exact.get(path.name, True) and torch.equal(buf, reference)
                bar.update(1)
    finally:
        for cache in caches:
            cache.shutdown()
    floor = percentile(paths[1].seconds, 50)
    return [_row(p, len(tokens), paths[0], floor, exact, ctx) for p in paths if p is not paths[1]]


def _row(
    path: _Path, tokens: int, recompute: _Path, floor: float, exact: dict[str, bool], ctx: Context
) -> dict[str, Any]:
    per = 1000 / tokens
    p50, p99 = percentile(path.seconds, 50), percentile(path.seconds, 99)
    row: dict[str, Any] = {
        "path": path.name,
        "tokens": tokens,
        "ms_per_1000_p50": 1e3 * p50 * per,
        "ms_per_1000_p99": 1e3 * p99 * per,
        "samples_ms": [1e3 * s for s in path.seconds],
    }
    kv_bytes = tokens * ctx.engine.layout.bytes_per_token
    if path is recompute:
        flops = 2 * sum(m.in_features * m.out_features for m in _matmuls(ctx.engine.model))
        flops *= tokens
        row |= {
            "linear_ms_per_1000_p50": 1e3 * floor * per,
            "linear_gflops": flops / floor / 1e9,
            "over_linear": p50 / floor,
        }
        return row
    row |= {
        "speedup_vs_recompute": percentile(recompute.seconds, 50) / p50,
        "kv_bytes": kv_bytes,
        "gb_per_s": kv_bytes / p50 / 1e9,
        "of_memcpy": kv_bytes / p50 / ctx.memcpy_bps,
        "exact": exact.get(path.name, False),
    }
    for key, values in path.parts.items():
        row[f"{key}_ms_per_1000_p50"] = 1e3 * percentile(values, 50) * per
    target = TARGETS.get(path.name.split("-")[0])
    if target is not None:
        row |= {"target": target, "met": row["speedup_vs_recompute"] >= target}
    return row


def _matmuls(model: torch.nn.Module) -> list[LinearLayer]:
    """The linear layers every prompt token goes through: all but the output head (a prefill
    computes logits for its last token only)."""
    output = getattr(model, "get_output_embeddings", None)
    head = output() if callable(output) else None
    return [m for m in linear_layers(model) if m is not head]


def _linear_seconds(model: torch.nn.Module, rows: int) -> Callable[[], dict[str, float]]:
    """The prefill's linear layers alone on ``rows`` random rows: its GEMM time, the most
    of a prefill on a CPU (attention, norms and the rest excluded)."""
    layers = _matmuls(model)
    inputs = {m.in_features: torch.randn(rows, m.in_features) for m in layers}

    def run() -> dict[str, float]:
        with torch.inference_mode():
            for m in layers:
                m(inputs[m.in_features])
        return {}

    return run


def line(row: dict[str, Any]) -> str:
    head = (
        f"tiers restore   {row['path']:<10} {row['tokens']} tokens, per 1,000: "
        f"p50 {row['ms_per_1000_p50']:8.1f} ms p99 {row['ms_per_1000_p99']:8.1f} ms"
    )
    if row["path"] == "recompute":
        return (
            f"{head}  (its linear layers alone: {row['linear_ms_per_1000_p50']:.0f} ms, "
            f"{row['linear_gflops']:.0f} GFLOP/s; prefill = {row['over_linear']:.2f}x that)"
        )
    parts = ""
    if "promote_ms_per_1000_p50" in row:
        parts = (
            f"  promote {row['promote_ms_per_1000_p50']:.1f} ms"
            f" (tier reads {row['tier_read_ms_per_1000_p50']:.1f} ms)"
        )
    target = ""
    if "target" in row:
        verdict = "met" if row["met"] else "NOT met"
        target = f" (target >= {row['target']:.0f}x: {verdict})"
    warm = {
        "disk": "  page cache warm",
        "disk-sealed": "  page cache warm",
        "disk-cold": "  pages dropped first",
    }
    return (
        f"{head}  {row['speedup_vs_recompute']:6.1f}x recompute{target}"
        f"  {row['gb_per_s']:5.2f} GB/s = {row['of_memcpy']:.2f}x memcpy{parts}"
        f"  exact={'yes' if row['exact'] else 'NO'}{warm.get(row['path'], '')}"
    )

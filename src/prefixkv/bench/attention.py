"""``prefixkv bench attention``: one decode step's attention over pool blocks, against a
contiguous buffer per request and against gathering the blocks first (the trap).

SmolLM2-135M's geometry (30 layers, 9 query heads over 3 KV heads of 64, fp32) unless told
otherwise; random KV in a pool the size of the server's default cache, so reads come from
memory, not from a warm CPU cache. Per (batch, context), every variant attends one query
token of each of ``batch`` sequences to its ``context`` tokens, for all layers:

- ``contiguous``: each sequence's KV in its own buffer (what a per-request workspace gives);
- ``in place, 1 run``: blocks read where they lie, the context in one run of block ids;
- ``in place, 2 runs``: a shared prefix (the first 3/4) and the sequence's own blocks,
  merged by log-sum-exp (the common case of a cached prefix);
- ``gather``: the blocks copied into a fresh buffer (``index_select``) before attention.

The floor is the KV bytes a step must read at the measured memory bandwidth.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from prefixkv.bench.machine import describe, machine_info
from prefixkv.bench.roofline import measure_bandwidth
from prefixkv.bench.stats import percentile
from prefixkv.engine.batch.attention import SeqSpan, attend

LAYERS, HEADS, KV_HEADS, DIM, BLOCK = 30, 9, 3, 64, 16


def _timed(fn: Callable[[], object], repeat: int) -> list[float]:
    fn()
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def variants(batch: int, context: int, pool: torch.Tensor) -> dict[str, Callable[[], object]]:
    """Closures running one decode step's attention (all layers) per variant."""
    blocks = context // BLOCK
    flat = pool.view(LAYERS, 2, KV_HEADS, -1, DIM)  # [layers, 2, kv_heads, slots, dim]
    q = torch.randn(HEADS, 1, DIM)
    own = [(s * 2 * blocks) * BLOCK for s in range(batch)]  # sequence s: its own region
    one_run = [SeqSpan(0, 1, context, ((a, context),)) for a in own]
    split = blocks * 3 // 4 * BLOCK
    prefix = (batch * 2 * blocks) * BLOCK  # a shared prefix after every own region
    two_runs = [SeqSpan(0, 1, context, ((prefix, split), (a, context - split))) for a in own]
    contiguous = [torch.randn(LAYERS, 2, KV_HEADS, context, DIM) for _ in range(batch)]
    ids = [torch.arange(a // BLOCK, a // BLOCK + blocks) for a in own]
    scale = DIM**-0.5

    def in_place(spans: list[SeqSpan]) -> None:
        for layer in range(LAYERS):
            for span in spans:
                attend(q, flat[layer, 0], flat[layer, 1], span, HEADS // KV_HEADS, scale)

    def buffers() -> None:
        packed = q.view(1, KV_HEADS, HEADS // KV_HEADS, DIM)
        for layer in range(LAYERS):
            for kv in contiguous:
                F.scaled_dot_product_attention(packed, kv[layer, 0][None], kv[layer, 1][None])

    def gather() -> None:
        packed = q.view(1, KV_HEADS, HEADS // KV_HEADS, DIM)
        for layer in range(LAYERS):
            for block_ids in ids:
                k = pool[layer, 0].index_select(1, block_ids).view(1, KV_HEADS, context, DIM)
                v = pool[layer, 1].index_select(1, block_ids).view(1, KV_HEADS, context, DIM)
                F.scaled_dot_product_attention(packed, k, v)

    return {
        "contiguous": buffers,
        "in place, 1 run": lambda: in_place(one_run),
        "in place, 2 runs": lambda: in_place(two_runs),
        "gather": gather,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="prefixkv bench attention", description=__doc__)
    p.add_argument("--batches", default="1,4,16", help="sequences per step, comma-separated")
    p.add_argument("--contexts", default="256,1024,4096", help="tokens per sequence")
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--out", type=Path, default=Path("results/attention.json"))
    args = p.parse_args(argv)
    info = machine_info()
    print(describe(info), flush=True)
    gbs = measure_bandwidth() / 1e9
    print(f"# memory read bandwidth {gbs:.1f} GB/s; times are one decode step, all {LAYERS} layers")
    rows: list[dict[str, Any]] = []
    batches = [int(b) for b in args.batches.split(",")]
    contexts = [int(c) for c in args.contexts.split(",")]
    # Room for every sequence's own region twice over plus a shared prefix, per the largest case.
    slots = max(batches) * 2 * max(contexts) + max(contexts)
    pool = torch.randn(LAYERS, 2, KV_HEADS, slots // BLOCK, BLOCK, DIM)
    for batch in batches:
        for context in contexts:
            floor = batch * context * LAYERS * 2 * KV_HEADS * DIM * 4 / (gbs * 1e9)
            times = {n: _timed(f, args.repeat) for n, f in variants(batch, context, pool).items()}
            rows.append(_line(batch, context, floor, times))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"machine": info, "bandwidth_gb_s": gbs, "rows": rows}, indent=2)
    )
    print(f"results: {args.out}")
    return 0


def _line(batch: int, context: int, floor: float, times: dict[str, list[float]]) -> dict[str, Any]:
    p50 = {n: percentile(t, 50) for n, t in times.items()}
    p99 = {n: percentile(t, 99) for n, t in times.items()}
    cells = "  ".join(f"{n} {p50[n] * 1e3:7.2f} ms (p99 {p99[n] * 1e3:.2f})" for n in p50)
    print(
        f"batch {batch:>3} x {context:>5} tokens: floor {floor * 1e3:6.2f} ms  {cells}", flush=True
    )
    return {"batch": batch, "context": context, "floor_s": floor, "p50_s": p50, "p99_s": p99}

"""The native linear kernel per weight format (f32, bf16, q8_0, q4_0, q4_1, and the K-quants
q4_k, q5_k, q6_k where rows are multiples of 256) at SmolLM2-135M's shapes or a
Llama-3.2-1B's (``--shapes llama-1b``), with the f32 kernel as the baseline in the same run.

For each layer shape, format and row count: milliseconds per call with the weights coming
from memory, not the caches (each timed round calls the layer on ``copies`` distinct copies
of its packed weight, together at least ``--cold-mib`` MiB, well past the 32 MiB L3 here;
best of ``--repeat`` rounds, the formats taking turns), the bytes one call streams, and the weight-stream floor: those
bytes over the memory read bandwidth measured in this process
(:func:`prefixkv.bench.roofline.measure_bandwidth`, the fastest one-pass read), and the rate the kernel
streamed them at the first row count (GB/s; past the "floor" where the kernel reads faster
than those readers do). Shapes are the layers as the engine
joins them: q, k and v (576 -> 960), o (576 -> 576), gate and up (576 -> 3072), down
(1536 -> 576), and the tied LM head (576 -> 49152); for llama-1b q, k and v (2048 -> 3072),
gate and up (2048 -> 16384), down (8192 -> 2048). Quantized weights are random GGUF blocks
(:func:`prefixkv.kernels.formats.pack_gguf`); values do not change the kernel's time.

    python benchmarks/linear_formats.py [--shapes smollm2|llama-1b] [--rows 1 4 16] [--repeat 7]
        [--cold-mib 256] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from prefixkv.bench.roofline import measure_bandwidth
from prefixkv.kernels import kquants
from prefixkv.kernels.formats import (
    QUANTIZED,
    PackedWeight,
    block_bytes,
    gguf_row_bytes,
    pack_bf16,
    pack_f32,
    pack_gguf,
)
from prefixkv.kernels.ops import Kernels, load

SHAPES = {  # shape set: {layer: (in_features, out_features)}
    "smollm2": {
        "qkv": (576, 960),
        "o": (576, 576),
        "gate_up": (576, 3072),
        "down": (1536, 576),
        "lm_head": (576, 49152),
    },
    "llama-1b": {"qkv": (2048, 3072), "gate_up": (2048, 16384), "down": (8192, 2048)},
}
FORMATS = ("f32", "bf16", "q8_0", "q4_0", "q4_1", *kquants.K_FORMATS)
# where a GGUF block keeps its fp16 scales (and mins): (block bytes, offsets)
_HALVES = {"q8_0": (34, (0,)), "q4_0": (18, (0,)), "q4_1": (20, (0, 2)),
           "q4_k": (144, (0, 2)), "q5_k": (176, (0, 2)), "q6_k": (210, (208,))}  # fmt: skip


def fits(format: str, in_features: int) -> bool:
    """Whether ``format`` packs rows of ``in_features`` (the K-quants: multiples of 256)."""
    try:
        block_bytes(format, in_features)
    except ValueError:
        return False
    return True


def packed(format: str, in_features: int, out: int, rng: np.random.Generator) -> PackedWeight:
    """A random weight of the shape in ``format``."""
    if format in QUANTIZED:
        size, offsets = _HALVES[format]
        rows = rng.integers(0, 256, size=(out, gguf_row_bytes(format, in_features)), dtype=np.uint8)
        blocks = rows.reshape(out, -1, size)
        for at in offsets:  # finite d (and m): no NaN in the sums
            scales = rng.standard_normal(blocks.shape[:2]).astype(np.float16) * np.float16(0.01)
            blocks[..., at : at + 2] = scales[..., None].view(np.uint8)
        return pack_gguf(format, rows, in_features)
    weight = torch.from_numpy(rng.standard_normal((out, in_features), dtype=np.float32))
    return pack_f32(weight) if format == "f32" else pack_bf16(weight.bfloat16())


def round_ms(kernels: Kernels, weights: list[PackedWeight], x: torch.Tensor) -> float:
    """Milliseconds per call over one round: each weight called once."""
    start = time.perf_counter()
    for weight in weights:
        kernels.linear(x, weight, None)
    return (time.perf_counter() - start) / len(weights) * 1e3


def best_ms(kernels: Kernels, copies: dict[str, list[PackedWeight]], rows: int,
            repeat: int) -> dict[str, float]:  # fmt: skip
    """Per format, the best of ``repeat`` rounds; the formats take turns within each repeat,
    so a busy neighbour on the shared cores slows them alike rather than one of them."""
    x = torch.randn(rows, next(iter(copies.values()))[0].in_features)
    for weights in copies.values():  # warm-up
        round_ms(kernels, weights[:2], x)
    best = dict.fromkeys(copies, float("inf"))
    for _ in range(repeat):
        for format, weights in copies.items():
            best[format] = min(best[format], round_ms(kernels, weights, x))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="smollm2")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--cold-mib", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kernels, rng = load(), np.random.default_rng(0)
    bandwidth = measure_bandwidth()
    print(f"threads {torch.get_num_threads()}, read bandwidth {bandwidth / 1e9:.1f} GB/s; "
          f"per row count: ms per call, f32's ms / this format's")  # fmt: skip
    print(f"{'layer':8} {'format':6} {'MB':>7} {'floor ms':>9} {'GB/s':>7} "
          + " ".join(f"{f'{r} row ms':>10} {'x f32':>6}" for r in args.rows))  # fmt: skip
    for name, (in_features, out) in SHAPES[args.shapes].items():
        copies = {}
        for format in [f for f in FORMATS if fits(f, in_features)]:
            one = packed(format, in_features, out, rng)
            count = max(2, -(-args.cold_mib * (1 << 20) // one.nbytes))
            copies[format] = [one] + [
                PackedWeight(format, in_features, out, one.data.clone()) for _ in range(count - 1)
            ]
        times = {rows: best_ms(kernels, copies, rows, args.repeat) for rows in args.rows}
        for format, weights in copies.items():
            nbytes = weights[0].nbytes
            cells = " ".join(
                f"{t[format]:10.3f} {t['f32'] / t[format]:6.2f}" for t in times.values()
            )
            stream = nbytes / times[args.rows[0]][format] / 1e6  # GB/s at the first row count
            floor = nbytes / bandwidth * 1e3
            print(f"{name:8} {format:6} {nbytes / 1e6:7.2f} {floor:9.3f} {stream:7.1f} {cells}")
        del copies


if __name__ == "__main__":
    main()

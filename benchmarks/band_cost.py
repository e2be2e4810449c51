"""What a layer the attention kernels do not cover costs: one decode step's attention per
layer, B sequences of one context each (their own blocks, nothing shared), Gemma 2 2B's
attention geometry (8 query heads, 4 KV heads, head_dim 256), float32, through
paged attention as the batch runner calls it:

- ``plain``: causal attention through the kernel's plan;
- ``capped``: every key, logits capped (a Gemma 2 full layer);
- ``window W``: a sliding layer reading its last W tokens,

on the ``native`` kernel (the library caps and windows) and the ``torch`` one (capped and
windowed layers on :mod:`prefixkv.engine.batch.band`).

    PYTHONPATH=src python benchmarks/band_cost.py
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from prefixkv.engine.batch.attention import SeqSpan, StepLayout, paged_attention
from prefixkv.engine.batch.kernels import attention_kernel

HEADS, KV_HEADS, DIM = 8, 4, 256
REPEAT = 30


def _median_ms(fn: Callable[[], object]) -> float:
    fn()
    times = []
    for _ in range(REPEAT):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def step_costs(batch: int, context: int, window: int) -> dict[str, float]:
    """Median milliseconds of one layer's attention for each way (see the module doc)."""
    keys = torch.randn(KV_HEADS, batch * context, DIM)
    values = torch.randn(KV_HEADS, batch * context, DIM)
    spans = [SeqSpan(i, 1, context, ((i * context, context),)) for i in range(batch)]
    query = torch.randn(1, HEADS, batch, DIM)
    costs = {}
    for name in ("native", "torch"):
        kernel = attention_kernel(name, HEADS, KV_HEADS, torch.float32, torch.device("cpu"))
        plan, others = kernel.plan(spans, torch.device("cpu"))
        planned = tuple(s for s in spans if s not in others)
        step = StepLayout(torch.arange(batch), others, plan, planned, kernel=kernel)
        ways = {
            "plain": {},
            "capped": {"softcap": 50.0},
            f"window {window}": {"sliding_window": window},
        }
        for label, kwargs in ways.items():
            costs[f"{name} {label}"] = _median_ms(
                lambda step=step, kwargs=kwargs: paged_attention(
                    torch.nn.Module(), query, keys, values, None, step=step, **kwargs
                )
            )
    return costs


def main() -> None:
    torch.set_num_threads(1)
    print(f"one layer, one decode step, {torch.get_num_threads()} thread, median of {REPEAT}")
    for batch, context, window in ((1, 4096, 1024), (16, 1024, 512), (16, 4096, 1024)):
        costs = step_costs(batch, context, window)
        line = ", ".join(f"{name} {ms:.2f} ms" for name, ms in costs.items())
        print(f"{batch} x {context}: {line}")


if __name__ == "__main__":
    main()

"""What KV events cost the request path: ``store`` and ``open``/``grow``/``commit``/``close``
on a RAM cache (SmolLM2's KV layout, blocks of 16) with no observer, with the hook alone
(it only queues a record under the cache's lock), and with a publisher attached (its thread
names, encodes and sends, competing with the request thread for the GIL). Also how long the
publisher takes to drain after the last prompt.

    PYTHONPATH=src python benchmarks/kv_events_cost.py --prompts 2000 --blocks 32

Each prompt is distinct (every block new) and the pool holds a quarter of them, so stores
also evict: one stored and one removed report per prompt on average. Medians of
``--repeats`` runs, microseconds per prompt.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import deque

import torch

from prefixkv.cache.layout import KVLayout
from prefixkv.cache.paged import PrefixKVCache
from prefixkv.events import KVEventPublisher, attach, namer_for
from prefixkv.events.sinks import RamSink
from prefixkv.events.translate import Report
from prefixkv.tokens import as_token_bytes

LAYOUT = KVLayout(num_layers=30, num_kv_heads=3, head_dim=64)  # SmolLM2-135M
BLOCK = 16


def run_sequences(cache: PrefixKVCache, prompts: list[list[int]]) -> float:
    """Seconds per prompt to open, grow, commit and close each (a runner's calls)."""
    start = time.perf_counter()
    for tokens in prompts:
        table = cache.open(tokens)
        if cache.grow(table, len(tokens)):
            cache.commit(table, as_token_bytes(tokens))
        cache.close(table)
    return (time.perf_counter() - start) / len(prompts)


def one_run(prompts: list[list[int]], mode: str) -> tuple[float, float]:
    """(seconds per prompt on the request path, seconds the publisher then took to drain).
    ``mode``: ``none`` (no observer), ``hook`` (the publisher's hook into a queue nobody
    drains: the request path's own cost) or ``publisher`` (the whole thing, its thread
    competing for the GIL)."""
    capacity = len(prompts) * len(prompts[0]) // BLOCK // 4 * LAYOUT.block_bytes(BLOCK)
    cache = PrefixKVCache(LAYOUT, BLOCK, capacity)
    publisher = None
    if mode == "hook":
        cache.events = RamSink(deque[Report]().append)
    elif mode == "publisher":
        publisher = KVEventPublisher(namer_for(cache, bytes(16)), "tcp://127.0.0.1:0")
        attach(cache, publisher)
    per_prompt = run_sequences(cache, prompts)
    drained = time.perf_counter()
    if publisher is not None:
        assert publisher.flush(120)
        publisher.close()
    return per_prompt, time.perf_counter() - drained


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--blocks", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    prompts = [[p] * (args.blocks * BLOCK) for p in range(args.prompts)]
    for mode in ("none", "hook", "publisher"):
        runs = [one_run(prompts, mode) for _ in range(args.repeats)]
        path = statistics.median(r[0] for r in runs) * 1e6
        drain = statistics.median(r[1] for r in runs)
        print(f"{mode:>9}: {path:8.1f} us per prompt of {args.blocks} blocks on the request "
              f"path; publisher drained {drain:.3f} s after the last")  # fmt: skip


if __name__ == "__main__":
    main()

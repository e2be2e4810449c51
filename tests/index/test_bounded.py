"""Guarantee: bounded memory under churn. Eviction reclaims index nodes and their storage (no
tombstones): 10,000 insert/evict cycles leave the block count, the node count and the traced
memory of a PrefixIndex at their baseline."""

from __future__ import annotations

import gc
import random
import tracemalloc

from prefixkv import PrefixIndex


def test_index_churn_returns_to_baseline() -> None:
    index = PrefixIndex(4)
    rng = random.Random(1)
    shared = [rng.randrange(1000) for _ in range(32)]
    index.insert(shared, list(range(8)))
    baseline = (len(index), index.num_nodes)
    tracemalloc.start()
    try:
        for cycle in range(10_000):
            tail = [rng.randrange(1000) for _ in range(rng.randrange(4, 40))]
            index.insert(shared + tail, [("v", cycle, i) for i in range(18)])
            index.match(shared)  # keep the shared prefix the most recently used
            index.evict(len(index) - baseline[0])
            if cycle == 999:
                gc.collect()
                warm, _ = tracemalloc.get_traced_memory()
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (len(index), index.num_nodes) == baseline
    assert index.match(shared).num_tokens == 32
    assert after - warm < 64 * 1024, f"memory grew by {after - warm} bytes over 9,000 cycles"
    index.check_invariants()

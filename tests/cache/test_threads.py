"""Guarantee: thread safety of the cache. 8 threads x 1,000 mixed store / lookup / reset /
check calls on one PrefixKVCache (two namespaces, thread switches every 10 us) always read
the exact KV of their own prefix, lose no pin, and leave every invariant intact."""

from __future__ import annotations

import random
import sys
import threading
from collections.abc import Hashable

import torch

from prefixkv import PrefixKVCache

from ..kvfixtures import LAYOUT, kv_for


def test_eight_threads_hammering_the_cache_lose_no_pin() -> None:
    cache = PrefixKVCache(LAYOUT, 4, LAYOUT.block_bytes(4) * 40)
    prompts = [[p % 5, *range(p, p + 4 * (p % 6) + 3)] for p in range(30)]
    errors: list[BaseException] = []
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(1000):
                tokens = rng.choice(prompts)
                namespace: Hashable = rng.choice([None, "a"])
                roll = rng.random()
                if roll < 0.45:
                    cache.store(tokens, kv_for(tokens), namespace)
                elif roll < 0.9:
                    with cache.lookup(tokens, namespace) as lease:
                        expected = kv_for(tokens)
                        for layer, (keys, _) in enumerate(lease.kv):
                            assert torch.equal(keys, expected[layer][0][:, : lease.num_tokens])
                elif roll < 0.95:
                    cache.reset()
                else:
                    cache.check_invariants()
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(old)
    assert not errors, errors[0]
    stats = cache.stats()
    assert stats.pinned_blocks == 0 and cache.index.pinned_blocks == 0
    assert stats.queries > 2000 and stats.hit_tokens > 0
    cache.check_invariants()

"""One test per bug that earlier prefix caches shipped (see DEVELOPERS.md)."""

from __future__ import annotations

import gc
import random
import sys
import threading
import tracemalloc
from collections.abc import Hashable

import pytest
import torch

from prefixkv import PrefixIndex, PrefixKVCache

from .kvfixtures import LAYOUT, kv_for

# --- churn: eviction must reclaim nodes, not tombstone them ------------------------------


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


def test_cache_churn_keeps_memory_and_nodes_bounded() -> None:
    capacity_blocks = 64
    cache = PrefixKVCache(LAYOUT, 4, LAYOUT.block_bytes(4) * capacity_blocks)
    pool_bytes = cache.stats().capacity_bytes
    for cycle in range(10_000):
        tokens = [cycle % 997, cycle // 997, *range(cycle % 7, cycle % 7 + 20)]
        cache.store(tokens, kv_for(tokens))
        stats = cache.stats()
        assert stats.used_blocks <= capacity_blocks
        assert cache.index.num_nodes <= stats.used_blocks
    assert cache.stats().capacity_bytes == pool_bytes == cache.pool.data.numel() * 4
    assert cache.stats().evicted_blocks > 9_000
    assert cache.reset() > 0
    assert (len(cache.index), cache.index.num_nodes, cache.stats().free_blocks) == (
        0,
        0,
        capacity_blocks,
    )
    cache.check_invariants()


# --- collisions: nothing but verified tokens may produce a match ------------------------


def test_100k_distinct_random_blocks_have_no_key_collisions() -> None:
    rng = random.Random(2)
    index = PrefixIndex(16)
    prompts = {tuple(rng.randrange(2**32) for _ in range(16)) for _ in range(100_000)}
    for value, prompt in enumerate(sorted(prompts)):
        assert index.insert(prompt, [value]) == []
    assert len(index) == len(prompts) == 100_000
    for value, prompt in enumerate(sorted(prompts)):
        if value % 10 == 0:
            assert index.match(prompt).values == (value,)
    index.check_invariants()


@pytest.mark.parametrize("child_key", [lambda block: 0, lambda block: block[0] & 1])
def test_colliding_child_keys_never_yield_a_wrong_match(child_key: object) -> None:
    """Each value names its own prefix, so a wrong match is detectable."""
    rng = random.Random(3)
    index = PrefixIndex(2, child_key=child_key)  # type: ignore[arg-type]
    prompts = [[rng.randrange(4) for _ in range(rng.randrange(1, 12))] for _ in range(300)]
    for step in range(3000):
        prompt = rng.choice(prompts) + [rng.randrange(4) for _ in range(rng.randrange(3))]
        if step % 3 == 0:
            index.insert(prompt, [tuple(prompt[: 2 * (i + 1)]) for i in range(len(prompt) // 2)])
        elif step % 17 == 0:
            index.evict(rng.randrange(5))
        else:
            match = index.match(prompt)
            for i, value in enumerate(match.values):
                assert value == tuple(prompt[: 2 * (i + 1)]), "served another prefix's block"
    index.check_invariants()


# --- fan-out: the work of a match does not depend on the number of siblings -------------


class CountingKey:
    """A dict key that counts how often the dict compares it."""

    comparisons = 0

    def __init__(self, block: bytes) -> None:
        self.block = block

    def __hash__(self) -> int:
        return hash(self.block)

    def __eq__(self, other: object) -> bool:
        CountingKey.comparisons += 1
        return isinstance(other, CountingKey) and self.block == other.block


def _comparisons_for_match(num_siblings: int) -> int:
    index = PrefixIndex(2, child_key=CountingKey)
    for sibling in range(num_siblings):
        index.insert([sibling, 0, 7, 7], [f"s{sibling}", f"t{sibling}"])  # root fan-out
        index.insert([5, 5, sibling, 1], ["u", f"w{sibling}"])  # fan-out one level down
    CountingKey.comparisons = 0
    assert index.match([5, 5, 3, 1]).num_tokens == 4
    assert index.match([num_siblings - 1, 0, 7, 7]).num_tokens == 4
    return CountingKey.comparisons


def test_match_work_does_not_grow_with_siblings() -> None:
    few, many = _comparisons_for_match(4), _comparisons_for_match(20_000)
    assert many <= few + 2, (few, many)


class CountingPolicy:
    """LRU that counts priority computations (one per heap push)."""

    name = "counting-lru"
    hit_step = 0

    def __init__(self) -> None:
        self.calls = 0

    def priority(self, access: object) -> tuple[int, ...]:
        self.calls += 1
        return (access.tick,)  # type: ignore[attr-defined]


@pytest.mark.parametrize("leaves", [1_000, 100_000])
def test_one_evict_call_touches_only_what_it_evicts(leaves: int) -> None:
    policy = CountingPolicy()
    index = PrefixIndex(1, policy=policy)
    for leaf in range(leaves):
        index.insert([leaf], [leaf])
    policy.calls = 0
    assert index.evict(3) == [0, 1, 2]
    assert policy.calls == 0  # whole leaves go: no re-push, and no heap rebuild
    index.insert([leaves, 1, 2], ["a", "b", "c"])
    policy.calls = 0
    index.evict(1)  # takes one block of a longer leaf: exactly one re-push
    assert policy.calls <= 1


# --- concurrency: hammer every public method from 8 threads ------------------------------


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


def test_eight_threads_hammering_the_index() -> None:
    index = PrefixIndex(2)
    errors: list[BaseException] = []
    counter = iter(range(10**9))
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        held = []
        try:
            for _ in range(1000):
                tokens = [rng.randrange(3) for _ in range(rng.randrange(12))]
                roll = rng.random()
                if roll < 0.4:
                    with lock:
                        values = [next(counter) for _ in range(len(tokens) // 2)]
                    index.insert(tokens, values)
                elif roll < 0.7:
                    match = index.match(tokens)
                    try:
                        index.pin(match)
                        held.append(match)
                    except Exception as exc:  # StaleMatchError is legal under eviction
                        assert type(exc).__name__ == "StaleMatchError"
                elif roll < 0.85 and held:
                    index.unpin(held.pop(rng.randrange(len(held))))
                else:
                    index.evict(rng.randrange(4))
            for match in held:
                index.unpin(match)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[0]
    assert index.pinned_blocks == 0
    index.check_invariants()


# --- namespaces: tenants never see each other's prefixes --------------------------------


def test_namespaces_isolate_index_and_cache() -> None:
    index = PrefixIndex(4)
    tokens = list(range(16))
    index.insert(tokens, ["a0", "a1", "a2", "a3"], namespace="tenant-a")
    assert index.match(tokens, namespace="tenant-b").num_tokens == 0
    assert index.match(tokens).num_tokens == 0  # the default namespace is a namespace too
    index.insert(tokens, ["b0", "b1"], namespace="tenant-b")
    assert index.match(tokens, namespace="tenant-a").values == ("a0", "a1", "a2", "a3")
    assert index.match(tokens, namespace="tenant-b").values == ("b0", "b1")

    cache = PrefixKVCache(LAYOUT, 4, LAYOUT.block_bytes(4) * 16)
    cache.store(tokens, kv_for(tokens), namespace=("salt", "x"))
    with cache.lookup(tokens, namespace=("salt", "y")) as lease:
        assert lease.num_tokens == 0
    with cache.lookup(tokens, namespace=("salt", "x")) as lease:
        assert lease.num_tokens == 16
    stats = cache.stats()
    assert (stats.misses, stats.full_hits) == (1, 1)
    cache.check_invariants()

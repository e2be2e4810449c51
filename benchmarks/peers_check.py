"""Check the peer adapters in ``src/prefixkv/bench/peers.py`` and print their timings.

Run:  python benchmarks/peers_check.py [--quick]

For each peer: construct it (printing ``unavailable: reason`` and moving on if
it cannot be), assert match lengths (full hit, partial hit, miss), SGLang's
lock/evict semantics and allocator bookkeeping, vLLM's hashing and pool
eviction, then time with ``time.perf_counter_ns`` (warmup first, GC collected
and disabled while timing) and print p50/p99 per call:

* match hit of a cached prompt of 128 / 1K / 8K / 32K tokens,
* one SGLang evict call (one page) with 1K / 10K / 100K evictable leaves,
  each leaf a one-page prompt with its own first token (so a child of the
  root); after each call the evicted prompt is re-inserted, untimed,
* vLLM ``hash_blocks`` of a 32K prompt, and its lookup alone.

Exits non-zero if an assertion fails.
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import sys
import time
from array import array
from collections import deque
from collections.abc import Callable

from prefixkv.bench import peers

VOCAB = 128_000
MATCH_SIZES = (128, 1024, 8192, 32768)
LEAF_COUNTS = (1_000, 10_000, 100_000)


def rand_tokens(rng: random.Random, n: int, first: int | None = None) -> list[int]:
    tokens = [rng.randrange(VOCAB) for _ in range(n)]
    if first is not None and n:
        tokens[0] = first
    return tokens


def aligned(n: int, page: int) -> int:
    return n // page * page


def fmt_ns(ns: float) -> str:
    if ns >= 1e6:
        return f"{ns / 1e6:8.2f} ms"
    return f"{ns / 1e3:8.1f} us"


def bench(
    fn: Callable[[], object],
    reps: int,
    warmup: int,
    after: Callable[[], object] | None = None,
) -> tuple[float, float]:
    """p50/p99 in ns of ``fn()``; ``after()`` runs untimed after each call."""
    for _ in range(warmup):
        fn()
        if after is not None:
            after()
    samples: list[int] = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(reps):
            t0 = time.perf_counter_ns()
            fn()
            t1 = time.perf_counter_ns()
            samples.append(t1 - t0)
            if after is not None:
                after()
    finally:
        gc.enable()
    samples.sort()
    p50 = samples[len(samples) // 2]
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    return p50, p99


def report(label: str, p50: float, p99: float, reps: int) -> None:
    print(f"  {label:<44} p50 {fmt_ns(p50)}   p99 {fmt_ns(p99)}   (n={reps})", flush=True)


def construct(factory: Callable[[], object], label: str) -> object | None:
    try:
        t0 = time.perf_counter()
        peer = factory()
        print(
            f"{peer.name}: constructed in {time.perf_counter() - t0:.1f} s "
            f"(version {getattr(peer, 'version', '?')})",
            flush=True,
        )
        return peer
    except peers.PeerUnavailable as exc:
        print(f"{label}: unavailable: {exc}", flush=True)
        return None


# ---------------------------------------------------------------- SGLang


def count_nodes(radix: peers.SGLangRadix) -> int:
    stack, n = [radix.cache.root_node], 0
    while stack:
        node = stack.pop()
        n += 1
        stack.extend(node.children.values())
    return n


def check_sglang_semantics(page: int) -> None:
    rng = random.Random(1)
    r = peers.SGLangRadix(page_size=page)
    assert r.name == f"sglang-radix(page={page})", r.name

    def consistent() -> None:
        total = r.total_size()
        assert r.allocator.live == total, (r.allocator.live, total)
        assert r.evictable_size() + r.protected_size() == total

    a = rand_tokens(rng, 100, first=1)
    b = a[:64] + rand_tokens(rng, 40, first=2)  # shares 64 tokens with a
    c = rand_tokens(rng, 50, first=3)

    assert r.match(a) == 0  # miss on an empty tree
    r.insert(a)
    consistent()
    assert r.evictable_size() == aligned(100, page)
    assert r.match(a) == aligned(100, page)  # full hit
    assert r.match([*a, 5, 6, 7]) == aligned(100, page)  # hit, longer query
    assert r.match(c) == 0  # miss
    nodes = count_nodes(r)
    assert r.match(a[:50] + [VOCAB + 1] * 10) == aligned(50, page)  # partial hit
    assert count_nodes(r) == nodes + 1  # SGLang split the node where the match ended
    consistent()

    r.insert(a)  # duplicate: SGLang frees the fresh indices again
    consistent()
    assert r.evictable_size() == aligned(100, page)
    r.insert(b)
    consistent()
    shared = aligned(64, page)
    assert r.match(b) == aligned(104, page)
    assert r.evictable_size() == aligned(100, page) + aligned(104, page) - shared

    # lock a: evict everything else, a's tokens survive
    handle = r.lock(a)
    assert r.protected_size() == aligned(100, page)
    before_live = r.allocator.live
    unlocked = r.evictable_size()
    freed = r.evict(10**9)
    assert freed == unlocked == aligned(104, page) - shared, (freed, unlocked)
    assert before_live - r.allocator.live == freed  # evict returns what it freed
    assert r.evictable_size() == 0
    assert r.match(a) == aligned(100, page)
    assert r.match(b) == shared
    consistent()
    r.unlock(handle)
    assert r.protected_size() == 0 and r.evictable_size() == aligned(100, page)

    # evict a part: at least what was asked (whole leaves), never more than held
    r.insert(c)
    held = r.evictable_size()
    freed = r.evict(1)
    assert 1 <= freed <= held and r.evictable_size() == held - freed
    freed += r.evict(10**9)
    assert freed == held and r.evictable_size() == 0 and r.allocator.live == 0
    assert r.match(a) == 0

    r.insert(a)
    r.reset()
    assert r.match(a) == 0 and r.evictable_size() == 0 and r.allocator.live == 0
    print(f"  sglang page={page}: match/insert/lock/evict semantics OK", flush=True)


def sglang_timings(page: int, quick: bool) -> None:
    rng = random.Random(2)
    r = peers.SGLangRadix(page_size=page)
    for i, n in enumerate(MATCH_SIZES):
        prompt = rand_tokens(rng, n, first=10 + i)
        r.insert(prompt)
        assert r.match(prompt) == aligned(n, page)
        reps = max(50, (4000 if n <= 1024 else 500) // (4 if quick else 1))
        p50, p99 = bench(lambda prompt=prompt: r.match(prompt), reps, warmup=reps // 10)
        report(f"match hit {n} tokens", p50, p99, reps)
        arr = array("q", prompt)
        assert r.match_array(arr) == aligned(n, page)
        p50, p99 = bench(lambda arr=arr: r.match_array(arr), reps, warmup=reps // 10)
        report("  same, array('q') input (match_array)", p50, p99, reps)

    for leaves in LEAF_COUNTS:
        r.reset()
        prompts = deque(rand_tokens(rng, page, first=1000 + i) for i in range(leaves))
        t0 = time.perf_counter()
        for p in prompts:
            r.insert(p)
        ins_s = time.perf_counter() - t0
        assert r.evictable_size() == leaves * page
        assert len(r.cache.evictable_leaves) == leaves

        def reinsert(prompts: deque[list[int]] = prompts) -> None:
            p = prompts.popleft()
            r.insert(p)  # the LRU leaf is the oldest prompt
            prompts.append(p)

        results: list[int] = []

        def evict_one(results: list[int] = results) -> None:
            results.append(r.evict(page))

        reps = {1_000: 1000, 10_000: 200, 100_000: 30}[leaves] // (4 if quick else 1)
        p50, p99 = bench(evict_one, reps, warmup=3, after=reinsert)
        assert all(x == page for x in results), set(results)
        assert r.evictable_size() == leaves * page, "re-insert did not restore the leaf"
        assert r.allocator.live == leaves * page
        report(f"evict 1 page, {leaves} leaves (insert all {ins_s:.1f} s)", p50, p99, reps)

        if leaves == LEAF_COUNTS[-1]:
            t0 = time.perf_counter_ns()
            freed = r.evict(10**12)
            dt = time.perf_counter_ns() - t0
            assert freed == leaves * page and r.evictable_size() == 0
            assert r.allocator.live == 0 and r.match(prompts[0]) == 0
            print(
                f"  evict all {leaves} leaves in one call: {fmt_ns(dt)} ({freed} tokens freed)",
                flush=True,
            )


# ---------------------------------------------------------------- vLLM


def check_vllm_semantics(hash_name: str) -> None:
    rng = random.Random(3)
    bs = 16
    v = peers.VLLMHashing(block_size=bs, hash_name=hash_name)
    a = rand_tokens(rng, 100, first=1)
    b = a[:64] + rand_tokens(rng, 40, first=2)
    c = rand_tokens(rng, 50, first=3)

    hashes = v.hash_blocks(a)
    assert len(hashes) == 100 // bs and all(isinstance(h, bytes) for h in hashes)
    assert v.hash_blocks(a) == hashes  # deterministic within the process
    assert v.hash_blocks(b)[:4] == hashes[:4] and v.hash_blocks(b)[4] != hashes[4]
    assert v.match(a) == 0
    v.insert(a)
    assert v.cached_blocks() == 100 // bs
    assert v.match(a) == aligned(100, bs)  # full hit
    assert v.match(a[:50] + [VOCAB + 1] * 10) == aligned(50, bs)  # partial hit
    assert v.match(c) == 0  # miss
    assert v.match_hashes(hashes, 100) == 96 and v.match_hashes(hashes, 99) == 96
    assert v.match_hashes(hashes, 95) == 80  # the engine's len-1 cap would do this
    v.insert(a)  # duplicate: nothing new cached
    assert v.cached_blocks() == 100 // bs
    v.insert(b)
    assert v.cached_blocks() == 100 // bs + 104 // bs - 64 // bs
    assert v.match(b) == aligned(104, bs)

    # a small pool evicts the least recently freed blocks
    small = peers.VLLMHashing(block_size=bs, hash_name=hash_name, num_blocks=8)
    p1, p2, p3 = (rand_tokens(rng, 4 * bs, first=10 + i) for i in range(3))
    small.insert(p1)
    small.insert(p2)
    assert small.match(p1) == small.match(p2) == 4 * bs
    small.insert(p3)  # needs 4 blocks: evicts p1's (freed first)
    assert small.match(p3) == 4 * bs and small.match(p2) == 4 * bs and small.match(p1) == 0
    v.reset()
    assert v.match(a) == 0 and v.cached_blocks() == 0
    print(f"  vllm {hash_name}: hash/insert/match/pool-eviction semantics OK", flush=True)


def vllm_timings(v: peers.VLLMHashing, quick: bool) -> None:
    rng = random.Random(4)
    for i, n in enumerate(MATCH_SIZES):
        prompt = rand_tokens(rng, n, first=10 + i)
        v.insert(prompt)
        assert v.match(prompt) == aligned(n, v.block_size)
        reps = max(30, (2000 if n <= 1024 else 200) // (4 if quick else 1))
        p50, p99 = bench(lambda prompt=prompt: v.match(prompt), reps, warmup=reps // 10)
        report(f"match hit {n} tokens (hash + lookup)", p50, p99, reps)
        if n == MATCH_SIZES[-1]:
            p50, p99 = bench(lambda prompt=prompt: v.hash_blocks(prompt), reps, warmup=reps // 10)
            report(f"hash_blocks {n} tokens", p50, p99, reps)
            hashes = v.hash_blocks(prompt)
            p50, p99 = bench(lambda h=hashes, n=n: v.match_hashes(h, n), reps, warmup=reps // 10)
            report(f"lookup only {n} tokens (match_hashes)", p50, p99, reps)


# ---------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = ap.parse_args()
    print(
        f"python {sys.version.split()[0]}, pid {os.getpid()}, "
        f"gc disabled while timing, times per call",
        flush=True,
    )

    checked: list[str] = []
    for page in (16, 1):
        radix = construct(
            lambda page=page: peers.SGLangRadix(page_size=page), f"sglang-radix(page={page})"
        )
        if radix is None:
            break
        check_sglang_semantics(page)
        sglang_timings(page, args.quick)
        checked.append(radix.name)

    vllm_peers = []
    for hash_name in ("sha256", "xxhash"):
        v = construct(
            lambda h=hash_name: peers.VLLMHashing(block_size=16, hash_name=h),
            f"vllm-hash({hash_name})",
        )
        if v is None:
            break
        check_vllm_semantics(hash_name)
        vllm_peers.append(v)
        checked.append(v.name)
    for v in vllm_peers:  # both alive: each keeps its own NONE_HASH
        print(f"{v.name}:", flush=True)
        vllm_timings(v, args.quick)
    if len(vllm_peers) == 2:
        probe = list(range(64))
        vllm_peers[0].insert(probe)
        vllm_peers[1].insert(probe)
        assert vllm_peers[0].match(probe) == vllm_peers[1].match(probe) == 64
        assert vllm_peers[0].hash_blocks(probe) != vllm_peers[1].hash_blocks(probe)
    if checked:
        print(f"peers_check: all checks passed for {', '.join(checked)}", flush=True)
    else:
        print("peers_check: no peer available, nothing checked", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

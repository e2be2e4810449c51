"""Check the peer subjects in ``prefixkv.bench.peers`` (SGLang, vLLM) and print a few timings.

Run:  python benchmarks/peers_check.py [--quick]

For each peer: construct it (printing ``unavailable: reason`` and moving on if it cannot be),
assert its answers (full hit, partial hit, miss, duplicates), SGLang's lock/evict semantics
and allocator bookkeeping, vLLM's hashing and pool eviction, then time a match hit at 128 /
1K / 8K / 32K tokens in each input form (GC off while timing, p50/p99 per call). The full
side-by-side comparison is ``prefixkv bench index``. Exits non-zero if a check fails.
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
from array import array
from collections.abc import Callable
from typing import Any

from prefixkv.bench.peers.sglang import SGLangRadix
from prefixkv.bench.peers.stubs import PeerUnavailable
from prefixkv.bench.peers.vllm import VLLMHashing

VOCAB = 128_000
SIZES = (128, 1024, 8192, 32768)


def rand_tokens(rng: random.Random, n: int, first: int) -> list[int]:
    return [first] + [rng.randrange(VOCAB) for _ in range(n - 1)]


def aligned(n: int, page: int) -> int:
    return n // page * page


def p50_p99_us(fn: Callable[[], object], reps: int) -> tuple[float, float]:
    for _ in range(max(1, reps // 10)):
        fn()
    samples = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(reps):
            start = time.perf_counter_ns()
            fn()
            samples.append(time.perf_counter_ns() - start)
    finally:
        gc.enable()
    samples.sort()
    return samples[len(samples) // 2] / 1e3, samples[int(len(samples) * 0.99)] / 1e3


def construct(build: Callable[[], Any], label: str) -> Any:
    try:
        start = time.perf_counter()
        peer = build()
    except PeerUnavailable as exc:
        print(f"{label}: unavailable: {exc}", flush=True)
        return None
    took = time.perf_counter() - start
    print(f"{peer.name}: constructed in {took:.1f} s (version {peer.version})", flush=True)
    return peer


def check_sglang(page: int) -> None:
    rng = random.Random(1)
    r = SGLangRadix(page_size=page)

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
    assert r.match(a) == r.match(array("q", a)) == aligned(100, page)  # both forms
    assert r.match([*a, 5, 6, 7]) == aligned(100, page) and r.match(c) == 0
    assert r.match(a[:50] + [VOCAB + 1] * 10) == aligned(50, page)  # partial hit
    r.insert(a)  # duplicate: the fresh KV indices are freed again
    r.insert(b)
    consistent()
    shared = aligned(64, page)
    assert r.evictable_size() == aligned(100, page) + aligned(104, page) - shared

    node = r.pin(a)  # lock a's path: evicting everything else leaves it
    r.cache.inc_lock_ref(node)
    assert r.protected_size() == aligned(100, page)
    freed = r.evict(10**9)
    assert freed == aligned(104, page) - shared and r.evictable_size() == 0
    assert r.match(a) == aligned(100, page) and r.match(b) == shared
    r.cache.dec_lock_ref(node)
    consistent()
    assert r.evict(10**9) == aligned(100, page) and r.allocator.live == 0
    r.insert(a)
    r.reset()
    assert r.match(a) == 0 and r.allocator.live == 0
    print(f"  sglang page={page}: match/insert/lock/evict semantics OK", flush=True)


def check_vllm(hash_name: str) -> None:
    rng = random.Random(3)
    bs = 16
    v = VLLMHashing(block_size=bs, hash_name=hash_name)
    a = rand_tokens(rng, 100, first=1)
    b = a[:64] + rand_tokens(rng, 40, first=2)
    hashes = v.request(a).block_hashes
    assert len(hashes) == 100 // bs and v.request(array("q", a)).block_hashes == hashes
    b_hashes = v.request(b).block_hashes
    assert b_hashes[:4] == hashes[:4] and b_hashes[4] != hashes[4]
    assert v.match(a) == 0
    v.insert(a)
    assert v.cached_blocks() == 100 // bs
    assert v.match(a) == v.match(v.native(a)) == aligned(100, bs)
    assert v.match(a[:50] + [VOCAB + 1] * 10) == aligned(50, bs)
    v.insert(a)  # duplicate: nothing new cached
    v.insert(b)
    assert v.cached_blocks() == 100 // bs + 104 // bs - 64 // bs

    small = VLLMHashing(block_size=bs, hash_name=hash_name, num_blocks=8)
    p1, p2, p3 = (rand_tokens(rng, 4 * bs, first=10 + i) for i in range(3))
    small.insert(p1)
    small.insert(p2)
    small.insert(p3)  # needs 4 blocks: evicts p1's (freed first)
    assert small.match(p3) == small.match(p2) == 4 * bs and small.match(p1) == 0
    print(f"  vllm {hash_name}: hash/insert/match/pool-eviction semantics OK", flush=True)


def timings(peer: Any, quick: bool) -> None:
    rng = random.Random(4)
    for i, n in enumerate(SIZES):
        prompt = rand_tokens(rng, n, first=10 + i)
        peer.insert(prompt)
        reps = max(20, (2000 if n <= 1024 else 200) // (4 if quick else 1))
        forms = {"list": prompt, "array": array("q", prompt), "native": peer.native(prompt)}
        parts = []
        for form, tokens in forms.items():
            assert peer.match(tokens) == aligned(n, 16), form
            p50, p99 = p50_p99_us(lambda tokens=tokens: peer.match(tokens), reps)
            parts.append(f"[{form}] p50 {p50:8.1f} us  p99 {p99:8.1f} us")
        print(f"  match hit {n:>6}  " + "  ".join(parts), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = parser.parse_args()
    checked: list[str] = []
    for page in (16, 1):
        peer = construct(lambda page=page: SGLangRadix(page_size=page), f"sglang(page={page})")
        if peer is None:
            break
        check_sglang(page)
        timings(peer, args.quick)
        checked.append(peer.name)
    vllm_peers = []
    for hash_name in ("sha256", "xxhash"):
        peer = construct(lambda h=hash_name: VLLMHashing(16, h), f"vllm({hash_name})")
        if peer is None:
            break
        check_vllm(hash_name)
        vllm_peers.append(peer)
        checked.append(peer.name)
    for peer in vllm_peers:  # both alive: each keeps its own chain seed
        print(f"{peer.name}:", flush=True)
        timings(peer, args.quick)
    if len(vllm_peers) == 2:
        probe = list(range(64))
        assert (
            vllm_peers[0].request(probe).block_hashes != vllm_peers[1].request(probe).block_hashes
        )
    print(f"peers_check: all checks passed for {', '.join(checked) or 'no peer'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

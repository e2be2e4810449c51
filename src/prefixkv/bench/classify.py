"""``prefixkv bench classify``: what classifying a served miss adds to a request.

A request whose prompt is not wholly cached is classified when its table opens
(:func:`prefixkv.cache.explain.classify`, under the cache's lock): this times that call
beside the lookup every request makes anyway (``PrefixIndex.match``), on the same prompt
(``--tokens``, block 16), for each way a prompt can miss:

- ``partial_block``: every full block cached, a tail of 5 tokens;
- ``diverged``: the first half cached, then a different continuation;
- ``evicted``: the first half cached, the next block in a full eviction ring (16,384
  records), named with xxHash (a server with tiers) and with BLAKE2b (RAM only);
- ``cold``: nothing cached in the namespace, with 0, 100 and 1,000 other namespaces of the
  tenant (every one holding a different prompt);
- ``shared``: nothing cached in the namespace, 1,000 other namespaces of the tenant holding
  the prompt's first 256 tokens (one system prompt under every salt): the worst case, one
  descent per namespace (``other_namespace``).

Prints p50/p99 microseconds per call and writes ``results/classify.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefixkv.bench.machine import describe, machine_info
from prefixkv.bench.stats import percentile
from prefixkv.cache.evictions import BlockNaming, EvictionRing, LocalNamer
from prefixkv.cache.explain import classify
from prefixkv.index.evicted import EvictedRun
from prefixkv.index.tree import PrefixIndex
from prefixkv.tokens import TokenBytes, as_token_bytes

BLOCK = 16
VOCAB = 49152


def _prompt(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(VOCAB) for _ in range(n)]


def _time(call: Callable[[], object], reps: int) -> list[float]:
    out = []
    gc.disable()
    try:
        for _ in range(reps):
            start = time.perf_counter()
            call()
            out.append((time.perf_counter() - start) * 1e6)
    finally:
        gc.enable()
    return out


def _setting(
    name: str, index: PrefixIndex, ring: EvictionRing, buf: TokenBytes, reps: int
) -> dict[str, Any]:
    match = _time(lambda: index.match(buf, "own"), reps)
    added = _time(lambda: classify(index, ring, buf, "own"), reps)
    reason = classify(index, ring, buf, "own").reason
    row = {
        "case": name,
        "reason": reason,
        "match_p50_us": round(percentile(match, 50), 2),
        "classify_p50_us": round(percentile(added, 50), 2),
        "classify_p99_us": round(percentile(added, 99), 2),
    }
    print(
        f"classify {name:<24} ({reason}): match p50 {row['match_p50_us']:7.1f} us, "
        f"classify p50 {row['classify_p50_us']:7.1f} us p99 {row['classify_p99_us']:7.1f} us"
    )
    return row


def _full_ring(namer: BlockNaming, rng: random.Random, buf: TokenBytes, block: int) -> EvictionRing:
    ring = EvictionRing(namer)
    for _ in range(ring.capacity // 64):  # fill it with other prompts' blocks
        other = as_token_bytes(_prompt(rng, 64 * BLOCK))
        ring.evicted(EvictedRun("own", other, 0, 64))
    ring.evicted(EvictedRun("own", bytes(buf[: (block + 1) * BLOCK * 4]), block, 1))
    return ring


def run(tokens: int, reps: int, seed: int = 1) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    prompt = _prompt(rng, tokens)
    buf = as_token_bytes(prompt)
    half = tokens // BLOCK // 2
    rows = []
    index = PrefixIndex(BLOCK)
    index.insert(prompt, list(range(tokens // BLOCK)), "own")
    tail = as_token_bytes(prompt + _prompt(rng, 5))
    rows.append(_setting("partial_block", index, EvictionRing(LocalNamer(BLOCK)), tail, reps))
    index = PrefixIndex(BLOCK)
    index.insert(prompt[: half * BLOCK] + _prompt(rng, tokens), list(range(tokens)), "own")
    rows.append(_setting("diverged", index, EvictionRing(LocalNamer(BLOCK)), buf, reps))
    index = PrefixIndex(BLOCK)
    index.insert(prompt[: half * BLOCK], list(range(half)), "own")
    namers: list[tuple[str, BlockNaming]] = [("blake2b", LocalNamer(BLOCK))]
    try:
        from prefixkv.tiers.naming import BlockNamer

        namers.insert(0, ("xxh3", BlockNamer(bytes(16), BLOCK)))
    except ImportError:  # the [tiers] extra is not installed: RAM-only names only
        pass
    for label, namer in namers:
        ring = _full_ring(namer, rng, buf, half)
        rows.append(_setting(f"evicted[{label}]", index, ring, buf, reps))
    for others in (0, 100, 1000):
        index = PrefixIndex(BLOCK)
        for i in range(others):
            index.insert(_prompt(rng, 4 * BLOCK), [0, 1, 2, 3], ("salt", i))
        label = f"cold[{others} namespaces]"
        rows.append(_setting(label, index, EvictionRing(LocalNamer(BLOCK)), buf, reps))
    index = PrefixIndex(BLOCK)
    shared = prompt[: 16 * BLOCK]  # e.g. one system prompt under every salt
    for i in range(1000):
        index.insert(shared + _prompt(rng, BLOCK), list(range(17)), ("salt", i))
    label = "shared[1000 namespaces]"
    rows.append(_setting(label, index, EvictionRing(LocalNamer(BLOCK)), buf, max(50, reps // 10)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prefixkv bench classify", description=__doc__)
    parser.add_argument("--tokens", type=int, default=1024, help="prompt tokens")
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("results/classify.json"))
    args = parser.parse_args(argv or [])
    info = machine_info()
    print(describe(info))
    rows = run(args.tokens, args.reps)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "machine": info,
        "args": {"tokens": args.tokens, "reps": args.reps},
        "block": BLOCK,
        "rows": rows,
    }
    args.out.write_text(json.dumps(record, indent=2))
    print(f"# wrote {args.out}")
    return 0

"""Cases (b) and (e) of ``prefixkv bench tiers``: a working set larger than RAM; and the
long documents of cases (c) and (d).

The workload: ``documents`` documents, each asked ``questions`` questions, the (document,
question) pairs in a seeded random order, run one at a time through the engine's serial path
(``Engine.generate``: TTFT is the time to the first token, including the lookup, the
promotion from lower tiers and the prefill of what is not cached). The *working set* is the
documents' KV: the distinct whole blocks of each document's shared prompt prefix. Every
setting gets the same RAM budget (``ram_fraction`` of the working set, default 1/4) and a
fresh, empty set of tiers; the settings run in lockstep (see :func:`run_settings`).

(b) RAM only; RAM + a disk tier that holds everything; RAM + a disk tier holding
``small_disk`` of the working set + Redis (unbounded). (e) RAM + a disk tier holding
``lower_fraction`` of the working set's uncompressed records, with ``--tier-compression``
none, int8 and int4. Exact settings must reply exactly as RAM only does (asserted); lossy
ones report how many replies match.

Token hit rate is the RAM cache's ``hit_tokens / query_tokens`` (after promotion, so tier
hits count); *ideal* is that of an unbounded cache on the same requests.
"""

from __future__ import annotations

import hashlib
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from prefixkv.bench import workloads
from prefixkv.bench.stats import percentile
from prefixkv.bench.tiers_restore import Context
from prefixkv.tiers.build import build_tiered
from prefixkv.tiers.record import HEADER_BYTES
from prefixkv.tiers.tiered import TieredCache
from prefixkv.tokens import TOKEN_BYTES

HIT_TARGET = 3.0  # RAM + disk token hit rate >= 3x RAM only at a RAM budget of 1/4


@dataclass(frozen=True)
class Workset:
    prompts: list[tuple[int, list[dict[str, str]]]]  # (document, messages), in run order
    blocks: int  # distinct blocks of the documents' shared prefixes
    block_bytes: int
    record_bytes: int  # one uncompressed record on a tier
    ideal_hit_rate: float
    ram_bytes: int

    @property
    def kv_bytes(self) -> int:
        return self.blocks * self.block_bytes


def qa_prompts(
    documents: int, questions: int, sentences: int, seed: int
) -> list[tuple[int, list[dict[str, str]]]]:
    docs = [workloads.document(50_000 + 1000 * seed + d, sentences) for d in range(documents)]
    pairs = [(d, q) for d in range(documents) for q in range(questions)]
    random.Random(seed).shuffle(pairs)
    return [
        (
            d,
            [
                {"role": "system", "content": "Answer the question using only the document."},
                {
                    "role": "user",
                    "content": f"Document:\n{docs[d]}\n\nQuestion: "
                    f"{workloads.rag_question(1000 * d + q)} (question {q + 1})",
                },
            ],
        )
        for d, q in pairs
    ]


def _chain(ids: bytes, blocks: int, step: int) -> list[bytes]:
    """One digest per leading block: block ``i``'s stands for the prefix up to its end."""
    out, digest = [], b""
    for i in range(blocks):
        digest = hashlib.blake2b(digest + ids[i * step : (i + 1) * step], digest_size=16).digest()
        out.append(digest)
    return out


def make_workset(
    ctx: Context, documents: int, questions: int, sentences: int, seed: int, ram_fraction: float
) -> Workset:
    prompts = qa_prompts(documents, questions, sentences, seed)
    size, step = ctx.block_size, ctx.block_size * TOKEN_BYTES
    ids = [bytes(ctx.engine.request(messages).ids) for _, messages in prompts]
    shared: dict[int, bytes] = {}
    for (doc, _), one in zip(prompts, ids, strict=True):
        other = shared.get(doc, one)
        common = common_prefix(one, other)
        shared[doc] = one[: common - common % TOKEN_BYTES]
    working = {d for one in shared.values() for d in _chain(one, len(one) // step, step)}
    seen: set[bytes] = set()
    hits = total = 0
    for one in ids:
        chain = _chain(one, len(one) // step, step)
        hits += size * next((i for i, d in enumerate(chain) if d not in seen), len(chain))
        total += len(one) // TOKEN_BYTES
        seen.update(chain)
    layout = ctx.engine.layout
    block_bytes = layout.block_bytes(size)
    ram_blocks = max(1, round(len(working) * ram_fraction))
    return Workset(
        prompts=prompts,
        blocks=len(working),
        block_bytes=block_bytes,
        record_bytes=HEADER_BYTES + step + block_bytes,
        ideal_hit_rate=hits / total,
        ram_bytes=ram_blocks * block_bytes,
    )


@dataclass(frozen=True)
class Setting:
    case: str  # "workset" or "compression"
    name: str
    describe: str
    build: Callable[[], Any]  # a fresh cache
    exact: bool = True


def workset_settings(ctx: Context, ws: Workset, small_disk: float) -> list[Setting]:
    small = int(small_disk * ws.blocks) * ws.record_bytes
    mb = ws.kv_bytes / 1e6
    rows = [
        Setting(
            "workset", "ram", f"RAM {ws.ram_bytes / 1e6:.0f} MB", lambda: ctx.hot(ws.ram_bytes)
        ),
        Setting(
            "workset",
            "ram+disk",
            "+ disk holding all",
            lambda: build_tiered(
                ctx.hot(ws.ram_bytes),
                ctx.fingerprint,
                disk_dir=_fresh(ctx, "workset-disk"),
                disk_bytes=1 << 40,
            ),
        ),
    ]
    if ctx.redis_url is None:
        ctx.notes.append("workset ram+disk+redis skipped: no Redis (see above)")
        return rows
    url = ctx.redis_url

    def three() -> TieredCache:
        ctx.flush_redis()
        return build_tiered(
            ctx.hot(ws.ram_bytes),
            ctx.fingerprint,
            disk_dir=_fresh(ctx, "workset-disk-small"),
            disk_bytes=small,
            redis_url=url,
            key=ctx.key,  # Redis is shared: records are sealed, as in a deployment
        )

    describe = f"+ disk {small / 1e6:.0f} MB ({small_disk:.2g} of {mb:.0f} MB) + redis"
    return [*rows, Setting("workset", "ram+disk+redis", describe, three)]


def compression_settings(ctx: Context, ws: Workset, lower: float) -> list[Setting]:
    try:
        from prefixkv.tiers.quantize import CODECS
    except ImportError:
        ctx.notes.append(
            "compression int8/int4 skipped: prefixkv.tiers.quantize is not on this branch"
        )
        names = ["none"]
    else:
        names = [n for n in ("none", "int8", "int4") if n in CODECS]
    budget = int(lower * ws.blocks) * ws.record_bytes

    def build(name: str) -> Callable[[], TieredCache]:
        return lambda: build_tiered(
            ctx.hot(ws.ram_bytes),
            ctx.fingerprint,
            disk_dir=_fresh(ctx, f"compression-{name}"),
            disk_bytes=budget,
            compression=name,
        )

    describe = f"+ disk {budget / 1e6:.0f} MB ({lower:.2g} of raw)"
    return [
        Setting("compression", name, describe, build(name), exact=name == "none") for name in names
    ]


def _fresh(ctx: Context, name: str) -> str:
    path = ctx.tmp / name
    shutil.rmtree(path, ignore_errors=True)
    return str(path)


def run_settings(
    ctx: Context, settings: list[Setting], ws: Workset, max_tokens: int, bar: Any
) -> list[dict[str, Any]]:
    """Every setting over its own fresh cache, in lockstep: request ``i`` runs on each setting
    (starting at a rotating one) before request ``i + 1`` runs on any, so a machine that
    slows down or speeds up meanwhile hits every setting alike. After each request the
    setting's tier writer is waited for: its writes run between requests, not during the
    next setting's (their cost is in the tiers' ``write_seconds``)."""
    caches = [s.build() for s in settings]
    engines = [ctx.engine.with_cache(cast(Any, c)) for c in caches]
    got: list[list[Any]] = [[] for _ in settings]
    try:
        for i, (_, messages) in enumerate(ws.prompts):
            for k in range(len(settings)):
                j = (i + k) % len(settings)
                got[j].append(engines[j].generate(messages, max_tokens=max_tokens))
                caches[j].flush()
                bar.update(1)
        return [_row(s, c, done, ws) for s, c, done in zip(settings, caches, got, strict=True)]
    finally:
        for cache in caches:
            cache.shutdown()


def _row(setting: Setting, cache: Any, done: list[Any], ws: Workset) -> dict[str, Any]:
    stats = cache.stats()
    tiers: list[dict[str, Any]] = []
    for t in cache.tier_stats():
        tiers.append(
            {
                **{k: v for k, v in t._asdict().items() if k != "counters"},
                **t.counters._asdict(),
            }
        )
    ttfts = [c.ttft for c in done]
    return {
        "case": setting.case,
        "setting": setting.name,
        "describe": setting.describe,
        "exact": setting.exact,
        "requests": len(done),
        "ram_bytes": ws.ram_bytes,
        "working_set_bytes": ws.kv_bytes,
        "token_hit_rate": stats.hit_tokens / stats.query_tokens,
        "reused_prompt_share": sum(c.cached_tokens for c in done)
        / sum(c.prompt_tokens for c in done),
        "ideal_hit_rate": ws.ideal_hit_rate,
        "ttft_p50_ms": 1e3 * percentile(ttfts, 50),
        "ttft_p99_ms": 1e3 * percentile(ttfts, 99),
        "ttft_samples_ms": [1e3 * t for t in ttfts],
        "cached_tokens": [c.cached_tokens for c in done],
        "evicted_blocks": stats.evicted_blocks,
        "tiers": tiers,
        "replies": [list(c.token_ids) for c in done],
    }


def compare(rows: list[dict[str, Any]]) -> None:
    """Add ``identical`` (replies equal to the first row's, the reference) and ratios to it."""
    reference = rows[0]
    for row in rows:
        same = sum(a == b for a, b in zip(row["replies"], reference["replies"], strict=True))
        row["identical"] = same
        row["reference"] = reference["setting"]
        row["hit_vs_ram"] = row["token_hit_rate"] / max(reference["token_hit_rate"], 1e-9)
        row["ttft_vs_ram"] = row["ttft_p50_ms"] / reference["ttft_p50_ms"]
        if row["case"] == "workset" and row["setting"] == "ram+disk":
            row |= {"target": HIT_TARGET, "met": row["hit_vs_ram"] >= HIT_TARGET}


def line(row: dict[str, Any]) -> str:
    tier_hits = " ".join(f"{t['tier']} hits {t['hit_blocks']}" for t in row["tiers"])
    tier_hits += "".join(
        f" {t['tier']} REJECTED {t['verification_failures']}"
        for t in row["tiers"]
        if t["verification_failures"]
    )
    ratio = ""
    if row["setting"] != row["reference"]:
        ratio = f" ({row['hit_vs_ram']:.2f}x ram"
        if "target" in row:
            ratio += f"; target >= {row['target']:.0f}x: {'met' if row['met'] else 'NOT met'}"
        ratio += ")"
    if row["setting"] == row["reference"]:
        same = "identical=ref"
    elif row["exact"]:
        same = f"identical={row['identical']}/{row['requests']}"
    else:
        same = f"same as exact={row['identical']}/{row['requests']} (lossy)"
    return (
        f"tiers {row['case']:<11} {row['setting']:<14} {row['describe']:<38} n={row['requests']}"
        f"  hit={100 * row['token_hit_rate']:5.1f}%{ratio} ideal={100 * row['ideal_hit_rate']:.1f}%"
        f"  TTFT p50 {row['ttft_p50_ms']:7.1f} ms p99 {row['ttft_p99_ms']:7.1f} ms"
        f" ({row['ttft_vs_ram']:.2f}x ram)  {tier_hits or 'no tiers'}  {same}"
    )


def long_document(engine: Any, seed: int, tokens: int) -> list[dict[str, str]]:
    """A question about a document whose prompt holds at least ``tokens`` tokens before the
    question (sentences added until it does)."""
    sentences = max(1, tokens // 25)
    while True:
        messages = _qa(workloads.document(seed, sentences), "What is the oldest year named?")
        other = _qa(workloads.document(seed, sentences), "x")
        common = common_prefix(engine.request(messages).ids, engine.request(other).ids) // 4
        if common >= tokens:
            return messages
        sentences += max(1, (tokens - common) // 20)


def common_prefix(a: bytes, b: bytes) -> int:
    """Bytes ``a`` and ``b`` share at the start."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), len(a))


def _qa(document: str, question: str) -> list[dict[str, str]]:
    return [
        {"role": "system", "content": "Answer the question using only the document."},
        {"role": "user", "content": f"Document:\n{document}\n\nQuestion: {question}"},
    ]


def with_question(messages: list[dict[str, str]], question: str) -> list[dict[str, str]]:
    head = messages[1]["content"].rsplit("Question: ", 1)[0]
    return [messages[0], {"role": "user", "content": f"{head}Question: {question}"}]

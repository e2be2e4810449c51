"""``prefixkv bench compression``: what ``--tier-compression int8|int4`` saves and costs.

For each codec (none, int8, int4), on one model in one run, one line:

- bytes: payload bytes per token, float16 zero points and steps included, against the KV in
  float32; and blocks per GiB of a tier (a record: header, token ids and payload).
- greedy exactness on the engine's exactness suite (the prompts of the SmolLM2 tests: chat,
  RAG and batch workloads, and a multi-turn conversation): each prompt's full blocks are
  handed back as a lower tier would (encoded, then decoded) and the engine generates
  ``--max-tokens`` greedy tokens from them. Compared with the engine without a cache: the
  share of prompts whose tokens are identical, and where the first differing token falls.
- teacher-forced top-1: the model is fed the exact continuation on top of the restored KV;
  the share of positions whose argmax equals the argmax with exact KV (same split, so the
  none codec agrees bit for bit), and the mean KL divergence from the exact distribution.
- restore: verifying records and decoding them into a pool-shaped tensor, per 1,000 tokens,
  against recomputing them (a prefill of as many tokens, timed in the same run). Reading the
  records from disk or Redis is not included (bytes per token says how much there is to read).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from prefixkv.bench import workloads
from prefixkv.bench.machine import describe, machine_info
from prefixkv.cache.layout import KVLayout
from prefixkv.cache.null import NullCache
from prefixkv.cache.paged import PrefixKVCache
from prefixkv.cli.options import positive_int
from prefixkv.engine.engine import Engine
from prefixkv.engine.prompts import Prompt, prompt_ids
from prefixkv.engine.workspace import Workspace
from prefixkv.tiers import record
from prefixkv.tiers.codec import BlockCodec
from prefixkv.tiers.naming import BlockNamer, fingerprint_of
from prefixkv.tiers.quantize import CODECS, codec_for_id, payload_bytes
from prefixkv.tiers.seal import ChecksumSeal
from prefixkv.tokens import TOKEN_BYTES, as_token_bytes, tokens_from_bytes

GIB = 1 << 30
FP32_BYTES = 4


def exactness_suite(plain: Engine, reply_tokens: int = 12) -> list[tuple[str, Prompt]]:
    """(name, prompt) for the prompts of tests/engine/test_smollm2.py: 8 chat, 6 RAG (two
    documents), 4 batch, and the 4 turns of one conversation (replies from ``plain``)."""
    suite: list[tuple[str, Prompt]] = []
    suite += [(f"chat{i}", r.chat()) for i, r in enumerate(workloads.chat_workload(8))]
    rag = workloads.rag_workload(documents=2, questions=3, sentences=18)
    suite += [(f"rag-{r.group}-{i}", r.chat()) for i, r in enumerate(rag)]
    suite += [(f"batch{i}", r.chat()) for i, r in enumerate(workloads.batch_workload(4))]
    messages: list[dict[str, str]] = [{"role": "system", "content": workloads.SYSTEM_PROMPT}]
    for turn, user in enumerate(workloads.multiturn_user_turns(1, 4)[0]):
        messages.append({"role": "user", "content": user})
        suite.append((f"turn{turn}", [dict(m) for m in messages]))
        reply = plain.generate(messages, max_tokens=reply_tokens).text
        messages.append({"role": "assistant", "content": reply})
    return suite


def prefill_kv(engine: Engine, ids: Sequence[int]) -> torch.Tensor:
    """The KV of ``ids`` from one prefill, ``[layers, 2, kv_heads, len(ids), head_dim]``."""
    workspace = Workspace(engine.layout, len(ids), engine.device)
    engine.forward(torch.tensor(list(ids)), 0, workspace.as_cache(engine.model.config, 0))
    return workspace.data


def round_trip(
    codec: BlockCodec, kv: torch.Tensor, layout: KVLayout, block_size: int, blocks: int
) -> torch.Tensor:
    """``kv`` with its first ``blocks`` blocks encoded and decoded, one block at a time, as a
    lower tier stores and restores them (a copy; ``kv`` is left alone)."""
    out = kv.clone()
    for b in range(blocks):
        span = slice(b * block_size, (b + 1) * block_size)
        payload = codec.encode(kv[:, :, :, span])
        out[:, :, :, span] = codec.decode(memoryview(payload), layout, block_size)
    return out


def first_divergence(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first token where ``a`` and ``b`` differ (a length too), None if equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def forced_logits(
    engine: Engine, kv: torch.Tensor, reuse: int, ids: Sequence[int], continuation: Sequence[int]
) -> torch.Tensor:
    """``[len(continuation), vocab]``: the logits predicting each continuation token, with the
    first ``reuse`` tokens' KV taken from ``kv`` and the rest of ``ids`` + ``continuation``
    fed in one pass."""
    feed = [*ids[reuse:], *continuation[:-1]]
    workspace = Workspace(engine.layout, reuse + len(feed), engine.device)
    workspace.data[:, :, :, :reuse] = kv[:, :, :, :reuse]
    cache = workspace.as_cache(engine.model.config, reuse)
    with torch.inference_mode():
        out = engine.model(
            input_ids=torch.tensor([feed], device=engine.device),
            position_ids=torch.arange(reuse, reuse + len(feed), device=engine.device)[None],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=len(continuation),
        )
    logits: torch.Tensor = out.logits[0].float()
    return logits


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


SEAL = ChecksumSeal()
"""Codecs are compared unsealed: sealing costs the same for each (``prefixkv bench tiers``
measures it)."""


def restore_times(
    engine: Engine, codecs: dict[str, BlockCodec], ids: Sequence[int], block_size: int, repeats: int
) -> dict[str, Any]:
    """Per codec: seconds to encode the blocks of ``ids`` into records, and to verify and
    decode them into a pool-shaped tensor; and seconds to prefill ``ids`` (recompute)."""
    layout = engine.layout
    prefill_kv(engine, ids)  # warm-up
    recompute = _median_seconds(lambda: prefill_kv(engine, ids), repeats)
    kv = prefill_kv(engine, ids)
    blocks = len(ids) // block_size
    tokens = as_token_bytes(list(ids))
    fingerprint = fingerprint_of(b"prefixkv bench compression", engine.name.encode())
    names = BlockNamer(fingerprint, block_size).names(tokens, None, blocks)
    parents = [BlockNamer(fingerprint, block_size).root(None), *names[:-1]]
    size = block_size * TOKEN_BYTES
    expected = [
        record.Expected(fingerprint, names[b], parents[b], tokens[b * size : (b + 1) * size])
        for b in range(blocks)
    ]
    pool = torch.zeros(
        (layout.num_layers, 2, layout.num_kv_heads, blocks, block_size, layout.head_dim),
        dtype=layout.dtype,
    )
    out: dict[str, Any] = {"tokens": blocks * block_size, "recompute_s": recompute}
    for name, codec in codecs.items():
        spans = [kv[:, :, :, b * block_size : (b + 1) * block_size] for b in range(blocks)]

        def encode(codec: BlockCodec = codec, spans: list[torch.Tensor] = spans) -> list[bytes]:
            return [
                record.encode(
                    SEAL, codec.id, e.fingerprint, e.name, e.parent, e.tokens, codec.encode(s)
                )
                for e, s in zip(expected, spans, strict=True)
            ]

        records = encode()
        encode_s = _median_seconds(encode, repeats)

        def verify(records: list[bytes] = records) -> list[tuple[int, memoryview]]:
            return [record.verify(r, e, SEAL) for r, e in zip(records, expected, strict=True)]

        def restore(records: list[bytes] = records) -> None:
            for b, (codec_id, payload) in enumerate(verify(records)):
                pool[:, :, :, b] = codec_for_id(codec_id).decode(payload, layout, block_size)

        restore()
        out[name] = {
            "encode_s": encode_s,
            "verify_s": _median_seconds(verify, repeats),
            "restore_s": _median_seconds(restore, repeats),
            "record_bytes": len(records[0]),
        }
    return out


def run(
    engine: Engine,
    suite: list[tuple[str, Prompt]],
    codecs: dict[str, BlockCodec],
    max_tokens: int,
    timing_ids: Sequence[int],
    repeats: int = 3,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Every figure of the module docstring, for ``engine`` (any block size cache; its block
    size is used) over ``suite``; ``timing_ids``: the tokens restored and recomputed."""
    block_size = engine.cache.block_size
    layout = engine.layout
    plain = engine.with_cache(NullCache(layout, block_size))
    cache = PrefixKVCache(layout, block_size, 256 << 20, engine.device)
    cached = engine.with_cache(cache)
    per: dict[str, list[dict[str, Any]]] = {name: [] for name in codecs}
    for prompt_name, prompt in suite:
        ids = tokens_from_bytes(engine.request(prompt).ids)
        blocks = len(ids) // block_size
        reuse = min(blocks * block_size, len(ids) - 1)
        reference = plain.generate(prompt, max_tokens=max_tokens).token_ids
        kv = prefill_kv(engine, ids)
        exact_logits = forced_logits(engine, kv, reuse, ids, reference)
        for name, codec in codecs.items():
            restored = round_trip(codec, kv, layout, block_size, blocks)
            stored = restored[:, :, :, : blocks * block_size]
            cache.reset()
            cache.store(
                ids[: blocks * block_size],
                [(stored[i, 0], stored[i, 1]) for i in range(layout.num_layers)],
            )
            done = cached.generate(prompt, max_tokens=max_tokens)
            assert done.cached_tokens == reuse, (done.cached_tokens, reuse)
            logits = forced_logits(engine, restored, reuse, ids, reference)
            agree = (logits.argmax(-1) == exact_logits.argmax(-1)).float().mean()
            kl = torch.nn.functional.kl_div(
                logits.double().log_softmax(-1),
                exact_logits.double().log_softmax(-1),
                log_target=True,
                reduction="none",
            ).sum(-1)
            per[name].append(
                {
                    "prompt": prompt_name,
                    "prompt_tokens": len(ids),
                    "restored_tokens": reuse,
                    "identical": done.token_ids == reference,
                    "first_divergence": first_divergence(done.token_ids, reference),
                    "top1_agreement": float(agree),
                    "mean_kl": float(kl.mean()),
                    "positions": len(reference),
                }
            )
        progress(prompt_name)
    timing = restore_times(engine, codecs, timing_ids, block_size, repeats)
    rows = [
        _row(name, codec, layout, block_size, per[name], timing) for name, codec in codecs.items()
    ]
    return {"rows": rows, "timing_tokens": timing["tokens"], "recompute_s": timing["recompute_s"]}


def _row(
    name: str,
    codec: BlockCodec,
    layout: KVLayout,
    block_size: int,
    prompts: list[dict[str, Any]],
    timing: dict[str, Any],
) -> dict[str, Any]:
    payload = payload_bytes(codec, layout, block_size)
    fp32_per_token = 2 * layout.num_layers * layout.num_kv_heads * layout.head_dim * FP32_BYTES
    diverged = [p["first_divergence"] for p in prompts if p["first_divergence"] is not None]
    positions = sum(p["positions"] for p in prompts)
    per_1k = 1000 / timing["tokens"]
    return {
        "codec": name,
        "codec_id": codec.id,
        "payload_bytes_per_block": payload,
        "bytes_per_token": payload / block_size,
        "fp32_bytes_per_token": fp32_per_token,
        "ratio_vs_fp32": payload / block_size / fp32_per_token,
        "record_bytes": timing[name]["record_bytes"],
        "blocks_per_gib": GIB // timing[name]["record_bytes"],
        "tokens_per_gib": GIB // timing[name]["record_bytes"] * block_size,
        "prompts": len(prompts),
        "identical": sum(p["identical"] for p in prompts),
        "identical_rate": sum(p["identical"] for p in prompts) / len(prompts),
        "diverged": len(diverged),
        "mean_first_divergence": statistics.mean(diverged) if diverged else None,
        "top1_agreement": sum(p["top1_agreement"] * p["positions"] for p in prompts) / positions,
        "mean_kl": sum(p["mean_kl"] * p["positions"] for p in prompts) / positions,
        "encode_ms_per_1k": timing[name]["encode_s"] * per_1k * 1e3,
        "verify_ms_per_1k": timing[name]["verify_s"] * per_1k * 1e3,
        "restore_ms_per_1k": timing[name]["restore_s"] * per_1k * 1e3,
        "recompute_ms_per_1k": timing["recompute_s"] * per_1k * 1e3,
        "per_prompt": prompts,
    }


def line(row: dict[str, Any]) -> str:
    """One comparable line per codec."""
    first = row["mean_first_divergence"]
    where = "none" if first is None else f"mean token {first:.1f} of {row['diverged']}"
    restore, recompute = row["restore_ms_per_1k"], row["recompute_ms_per_1k"]
    return (
        f"compression {row['codec']:<4}: {row['bytes_per_token']:>7,.0f} B/token incl. scales"
        f" ({1 / row['ratio_vs_fp32']:.2f}x smaller than fp32), {row['blocks_per_gib']:,}"
        f" blocks/GiB; greedy identical {row['identical']}/{row['prompts']}"
        f" ({100 * row['identical_rate']:.0f}%), first divergence {where};"
        f" teacher-forced top-1 {100 * row['top1_agreement']:.2f}% (KL {row['mean_kl']:.2e});"
        f" restore {restore:.1f} ms/1k tokens vs recompute {recompute:,.0f} ms"
        f" ({100 * restore / recompute:.2f}%); encode {row['encode_ms_per_1k']:.1f} ms/1k"
    )


def timing_prompt_ids(engine: Engine, tokens: int = 1024) -> list[int]:
    """About ``tokens`` ids of a long RAG prompt (fewer if the model's context is shorter),
    a whole number of blocks."""
    prompt = workloads.rag_workload(documents=1, questions=1, sentences=80)[0].chat()
    ids = tokens_from_bytes(prompt_ids(prompt, engine.tokenizer, engine.vocab_size))
    size = engine.cache.block_size
    limit = min(tokens, len(ids), engine.context_length - 1)
    return ids[: limit // size * size]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="prefixkv bench compression",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default="smollm2")
    p.add_argument("--max-tokens", type=positive_int, default=32, help="greedy tokens per prompt")
    p.add_argument("--block-size", type=positive_int, default=16)
    p.add_argument("--codecs", default="none,int8,int4", help="comma-separated")
    p.add_argument("--prompts", type=positive_int, default=None, help="the first N prompts only")
    p.add_argument("--repeats", type=positive_int, default=3, help="timed runs per measurement")
    p.add_argument("--out", type=Path, default=Path("results/compression.json"))
    args = p.parse_args(argv)
    names = args.codecs.split(",")
    if not set(names) <= set(CODECS):
        p.error(f"--codecs: a comma-separated list of {', '.join(CODECS)}")
    codecs = {name: CODECS[name] for name in names}
    info = machine_info()
    print(describe(info), flush=True)
    engine = Engine.from_pretrained(args.model, cache_bytes=64 << 20, block_size=args.block_size)
    plain = engine.with_cache(NullCache(engine.layout, args.block_size))
    plain.generate("Hello", max_tokens=2)  # warm-up
    suite = exactness_suite(plain)[: args.prompts]
    lay = engine.layout
    print(
        f"# {engine.name}: KV {lay.num_layers} layers x {lay.num_kv_heads} kv heads x "
        f"{lay.head_dim} dims, {str(lay.dtype).removeprefix('torch.')}; blocks of "
        f"{args.block_size} tokens; {len(suite)} prompts of the exactness suite, "
        f"{args.max_tokens} greedy tokens each",
        flush=True,
    )
    started = time.perf_counter()
    result = run(
        engine,
        suite,
        codecs,
        args.max_tokens,
        timing_prompt_ids(engine),
        args.repeats,
        progress=lambda name: print(f"#   {name} done", flush=True),
    )
    print(
        f"# restore and recompute timed over {result['timing_tokens']} tokens, median of "
        f"{args.repeats}; disk/Redis reads not included",
        flush=True,
    )
    for row in result["rows"]:
        print(line(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "machine": info,
        "model": engine.name,
        "layout": {
            "layers": lay.num_layers,
            "kv_heads": lay.num_kv_heads,
            "head_dim": lay.head_dim,
            "dtype": str(lay.dtype),
        },
        "block_size": args.block_size,
        "max_tokens": args.max_tokens,
        "seconds": time.perf_counter() - started,
        **result,
    }
    args.out.write_text(json.dumps(report, indent=2))
    print(f"results: {args.out}")
    return 0

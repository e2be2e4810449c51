"""``prefixkv bench ttft``: time to first token with and without the prefix cache.

For every request of a workload, in the same run and on the same model: the uncached engine
(a NullCache), the cached engine, and the *floor*: the model's forward pass over only the
tokens the cached engine recomputed, on top of KV that is already in place (timed alone,
so cached TTFT / floor is what tokenizing, looking up and restoring the prefix costs).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from prefixkv.bench import workloads
from prefixkv.bench.machine import describe, machine_info
from prefixkv.bench.stats import percentile
from prefixkv.tokens import tokens_from_bytes

WORKLOADS = ("chat", "rag", "batch", "multiturn")


@dataclass(frozen=True)
class Sample:
    workload: str
    group: str
    turn: int
    prompt_tokens: int
    cached_tokens: int
    uncached_ttft: float
    cached_ttft: float
    floor: float
    identical: bool


def _conversations(
    args: argparse.Namespace, name: str
) -> Iterator[tuple[str, int, list[dict[str, str]]]]:
    """(group, turn, messages) per request; multi-turn replies are appended by the runner."""
    if name == "multiturn":
        for c, turns in enumerate(workloads.multiturn_user_turns(args.conversations, args.turns)):
            history = [{"role": "system", "content": workloads.SYSTEM_PROMPT}]
            for t, user in enumerate(turns):
                history.append({"role": "user", "content": user})
                yield f"conv{c}", t + 1, history
        return
    make: dict[str, Callable[[], list[workloads.Request]]] = {
        "chat": lambda: workloads.chat_workload(args.requests),
        "rag": lambda: workloads.rag_workload(args.documents, args.questions),
        "batch": lambda: workloads.batch_workload(args.requests),
    }
    for request in make[name]():
        yield request.group, 1, request.chat()


def _floor(engine: Any, pool: Any, messages: list[dict[str, str]], reuse: int) -> float:
    """Seconds for the forward pass over ``ids[reuse:]`` (+ argmax) with the first ``reuse``
    tokens' KV already in a warm workspace."""
    import torch

    ids = engine.request(messages).ids
    model_ids = torch.tensor(tokens_from_bytes(ids))
    workspace = pool.acquire(len(model_ids))
    try:
        table = engine.cache.open(ids)
        try:
            assert table.cached_tokens >= reuse
            engine.cache.pool.gather_into(table.blocks[: table.indexed], workspace.data)
        finally:
            engine.cache.close(table)
        kv = workspace.as_cache(engine.model.config, reuse)
        start = time.perf_counter()
        int(engine.forward(model_ids[reuse:], reuse, kv).argmax())
        return time.perf_counter() - start
    finally:
        pool.release(workspace)


def run_workload(
    args: argparse.Namespace, name: str, cached: Any, plain: Any, pool: Any, bar: Any
) -> list[Sample]:
    cached.cache.reset()
    samples = []
    for group, turn, messages in _conversations(args, name):
        budget = args.reply_tokens if name == "multiturn" else args.max_tokens
        u = plain.generate(messages, max_tokens=budget)
        c = cached.generate(messages, max_tokens=budget)
        floor = _floor(cached, pool, messages, c.cached_tokens)
        samples.append(
            Sample(
                name,
                group,
                turn,
                c.prompt_tokens,
                c.cached_tokens,
                u.ttft,
                c.ttft,
                floor,
                u.token_ids == c.token_ids,
            )
        )
        if name == "multiturn":
            messages.append({"role": "assistant", "content": c.text})
        bar.update(1)
    return samples


def summarize(name: str, samples: list[Sample]) -> dict[str, Any]:
    un = [s.uncached_ttft for s in samples]
    ca = [s.cached_ttft for s in samples]
    fl = [s.floor for s in samples]
    out: dict[str, Any] = {
        "workload": name,
        "requests": len(samples),
        "uncached_p50_ms": 1e3 * percentile(un, 50),
        "uncached_p99_ms": 1e3 * percentile(un, 99),
        "cached_p50_ms": 1e3 * percentile(ca, 50),
        "cached_p99_ms": 1e3 * percentile(ca, 99),
        "floor_p50_ms": 1e3 * percentile(fl, 50),
        "speedup_p50": percentile(un, 50) / percentile(ca, 50),
        "token_hit_rate": sum(s.cached_tokens for s in samples)
        / sum(s.prompt_tokens for s in samples),
        "overhead_p50": percentile(ca, 50) / percentile(fl, 50),
        "overhead_per_request_p50": percentile([c / f for c, f in zip(ca, fl, strict=True)], 50),
        "identical": sum(s.identical for s in samples),
    }
    last = max(s.turn for s in samples)
    if last > 1:
        final = [s for s in samples if s.turn == last]
        out[f"speedup_turn{last}"] = sum(s.uncached_ttft for s in final) / sum(
            s.cached_ttft for s in final
        )
    return out


def line(summary: dict[str, Any]) -> str:
    extra = "".join(f"  {k}={v:.1f}x" for k, v in summary.items() if k.startswith("speedup_turn"))
    return (
        f"ttft  {summary['workload']:<9} n={summary['requests']:<3}"
        f" uncached p50={summary['uncached_p50_ms']:7.1f}ms p99={summary['uncached_p99_ms']:7.1f}ms"
        f"  cached p50={summary['cached_p50_ms']:7.1f}ms p99={summary['cached_p99_ms']:7.1f}ms"
        f"  speedup={summary['speedup_p50']:5.1f}x{extra}  hit={100 * summary['token_hit_rate']:5.1f}%"
        f"  floor p50={summary['floor_p50_ms']:6.1f}ms  cached/floor={summary['overhead_p50']:.3f}"
        f"  identical={summary['identical']}/{summary['requests']}"
    )


def _llamacpp_rag(args: argparse.Namespace, engine: Any) -> list[dict[str, Any]]:
    """The interleaved RAG workload through llama.cpp + LlamaRAMCache on the same GGUF."""
    import torch

    from prefixkv.bench.peers import llamacpp as llamacpp_peer
    from prefixkv.engine.loader import resolve_model

    reason = llamacpp_peer.available()
    gguf = resolve_model(args.model)
    if reason is None and gguf.suffix != ".gguf":
        reason = f"{gguf} is not a GGUF file"
    if reason is not None:
        print(f"# llama.cpp peer skipped: {reason}")
        return []
    requests = [r.chat() for r in workloads.rag_workload(args.documents, args.questions)]
    ttfts = llamacpp_peer.rag_ttft(gguf, requests, torch.get_num_threads())
    return [
        {
            "workload": "rag",
            "peer": "llama.cpp LlamaRAMCache",
            "requests": len(ttfts),
            "p50_ms": 1e3 * percentile(ttfts, 50),
            "p99_ms": 1e3 * percentile(ttfts, 99),
        }
    ]


def peer_line(summary: dict[str, Any]) -> str:
    return (
        f"ttft  {summary['workload']:<9} n={summary['requests']:<3} {summary['peer']}"
        f" p50={summary['p50_ms']:7.1f}ms p99={summary['p99_ms']:7.1f}ms"
    )


def chart(summaries: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s["workload"] for s in summaries]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.27
    for i, (key, label) in enumerate(
        [
            ("uncached_p50_ms", "no cache"),
            ("cached_p50_ms", "prefixkv"),
            ("floor_p50_ms", "floor (suffix prefill only)"),
        ]
    ):
        xs = [j + (i - 1) * width for j in range(len(names))]
        ax.bar(xs, [s[key] for s in summaries], width, label=label)
    for j, s in enumerate(summaries):
        ax.annotate(f"{s['speedup_p50']:.1f}x", (j, s["uncached_p50_ms"]), ha="center", va="bottom")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("TTFT p50 (ms)")
    ax.set_title("Time to first token, SmolLM2-135M on CPU")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="prefixkv bench ttft", description=__doc__)
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--max-tokens", type=int, default=8, help="tokens generated per request")
    parser.add_argument(
        "--reply-tokens", type=int, default=32, help="reply length per multi-turn turn"
    )
    parser.add_argument("--requests", type=int, default=16, help="chat and batch requests")
    parser.add_argument("--documents", type=int, default=4)
    parser.add_argument("--questions", type=int, default=3, help="questions per RAG document")
    parser.add_argument("--conversations", type=int, default=2)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument(
        "--llamacpp",
        choices=["auto", "off"],
        default="auto",
        help="also run the RAG workload through llama.cpp's LlamaRAMCache when installed",
    )
    parser.add_argument("--out", type=Path, default=Path("results/ttft.json"))
    parser.add_argument("--chart", type=Path, default=Path("results/ttft.png"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv or [])
    from tqdm import tqdm

    from prefixkv import NullCache
    from prefixkv.engine.engine import Engine
    from prefixkv.engine.workspace import WorkspacePool

    names = list(WORKLOADS) if args.workload == "all" else [args.workload]
    cached = Engine.from_pretrained(args.model, cache_bytes=1 << 30)
    plain = cached.with_cache(NullCache(cached.layout, cached.cache.block_size))
    pool = WorkspacePool(cached.layout, cached.device)
    for engine in (plain, cached):  # warm-up: first calls pay one-off allocation and dispatch
        engine.generate("Hello", max_tokens=2)
    info = machine_info()
    print(describe(info))
    summaries, samples = [], []
    total = sum(1 for n in names for _ in _conversations(args, n))
    with tqdm(total=total, desc="ttft", unit="req") as bar:
        for name in names:
            got = run_workload(args, name, cached, plain, pool, bar)
            samples += got
            summaries.append(summarize(name, got))
            bar.write(line(summaries[-1]))
    if "rag" in names and args.llamacpp == "auto":
        summaries += _llamacpp_rag(args, cached)
    for summary in summaries:
        print(line(summary) if "speedup_p50" in summary else peer_line(summary))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "machine": info,
                "args": {k: str(v) for k, v in vars(args).items()},
                "summaries": summaries,
                "samples": [asdict(s) for s in samples],
            },
            indent=2,
        )
    )
    chart([s for s in summaries if "speedup_p50" in s], args.chart)
    print(f"# wrote {args.out} and {args.chart}")
    return 0 if all(s.get("identical", s["requests"]) == s["requests"] for s in summaries) else 1


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))

"""Figures, lines, comparisons and the chart of ``prefixkv bench serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefixkv.bench import roofline
from prefixkv.bench.serve_client import Phase
from prefixkv.bench.servers import PREFIXKV, Setting
from prefixkv.bench.stats import percentile

OURS = "prefixkv"  # the setting compared with the best transformers configuration


def hit_rate(phase: Phase) -> float | None:
    """Cached / prompt tokens over the phase; None when the server reports no cached tokens."""
    cached = [r.cached_tokens for r in phase.replies]
    if any(c is None for c in cached):
        return None
    return sum(c or 0 for c in cached) / max(1, sum(r.prompt_tokens for r in phase.replies))


def identical(phase: Phase, reference: Phase) -> int:
    """How many replies have exactly the reference's text, request by request."""
    return sum(a.text == b.text for a, b in zip(phase.replies, reference.replies, strict=True))


def latencies(phase: Phase) -> dict[str, float | None]:
    """TTFT and inter-token latency p50/p99 in seconds (None: no reply had two text chunks)."""
    ttfts = [r.ttft for r in phase.replies]
    itl = [g for r in phase.replies for g in r.gaps]
    return {
        "ttft_p50_s": percentile(ttfts, 50),
        "ttft_p99_s": percentile(ttfts, 99),
        "itl_p50_s": percentile(itl, 50) if itl else None,
        "itl_p99_s": percentile(itl, 99) if itl else None,
    }


def summarize(
    phase: Phase,
    reference: Phase,
    setting: Setting,
    rates: roofline.MachineRates,
    size: roofline.ModelSize,
    uncached: int,
) -> dict[str, Any]:
    """One (setting, clients) row: throughput, latencies, hit rate, identical replies and the
    measured time over the roofline minimum (``uncached``: the ideal cache's prompt tokens)."""
    output = sum(r.completion_tokens for r in phase.replies)
    concurrency = min(phase.clients, setting.max_running or phase.clients)
    bound = roofline.bound(rates, size, uncached, output, concurrency)
    return {
        "setting": phase.setting,
        "kind": setting.kind,
        "clients": phase.clients,
        "requests": len(phase.replies),
        "seconds": phase.seconds,
        "requests_per_s": len(phase.replies) / phase.seconds,
        "output_tokens_per_s": output / phase.seconds,
        **latencies(phase),
        "prompt_tokens": sum(r.prompt_tokens for r in phase.replies),
        "output_tokens": output,
        "token_hit_rate": hit_rate(phase),
        "identical": identical(phase, reference),
        "reference": reference.setting,
        "ideal_uncached_prompt_tokens": uncached,
        "compute_min_s": bound.compute_s,
        "memory_min_s": bound.memory_s,
        "minimum_s": bound.minimum_s,
        "over_minimum": phase.seconds / bound.minimum_s,
        "weights": setting.weights,
        "weight_bytes": size.weight_bytes,
        "step_floor_s": size.weight_bytes / rates.bandwidth,
    }


def _ms(seconds: float | None) -> str:
    return "    n/a" if seconds is None else f"{1e3 * seconds:7.1f}"


def line(s: dict[str, Any]) -> str:
    """The comparable one-line form of a summary."""
    hit = "  n/a" if s["token_hit_rate"] is None else f"{100 * s['token_hit_rate']:5.1f}%"
    same = "ref" if s["setting"] == s["reference"] else f"{s['identical']}/{s['requests']}"
    return (
        f"serve {s['setting']:<16} c={s['clients']:<3} n={s['requests']:<4}"
        f" req/s={s['requests_per_s']:6.2f} out tok/s={s['output_tokens_per_s']:6.1f}"
        f"  TTFT p50={_ms(s['ttft_p50_s'])}ms p99={_ms(s['ttft_p99_s'])}ms"
        f"  ITL p50={_ms(s['itl_p50_s'])}ms p99={_ms(s['itl_p99_s'])}ms"
        f" (floor {_ms(s['step_floor_s'])}ms, {s['weights']})  hit={hit}"
        f"  identical={same}  time={s['seconds']:.1f}s min={s['minimum_s']:.2f}s"
        f" ({s['over_minimum']:.1f}x min)"
    )


def comparisons(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per client count, ``prefixkv`` against the transformers setting with the most req/s."""
    out = []
    for ours in (s for s in summaries if s["setting"] == OURS):
        theirs = [s for s in summaries if s["kind"] != PREFIXKV and s["clients"] == ours["clients"]]
        if not theirs:
            continue
        best = max(theirs, key=lambda s: s["requests_per_s"])
        out.append(
            {
                "clients": ours["clients"],
                "peer": best["setting"],
                "requests_per_s_ratio": ours["requests_per_s"] / best["requests_per_s"],
                "ttft_p50_ratio": ours["ttft_p50_s"] / best["ttft_p50_s"],
            }
        )
    return out


def comparison_line(c: dict[str, Any]) -> str:
    return (
        f"serve prefixkv vs {c['peer']:<14} c={c['clients']:<3} req/s {c['requests_per_s_ratio']:.2f}x"
        f"  TTFT p50 {c['ttft_p50_ratio']:.2f}x (prefixkv's / theirs)"
    )


def chart(summaries: list[dict[str, Any]], path: Path) -> None:
    """req/s and TTFT p50 against clients, one line per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
    for name in dict.fromkeys(s["setting"] for s in summaries):
        rows = [s for s in summaries if s["setting"] == name]
        xs = [s["clients"] for s in rows]
        left.plot(xs, [s["requests_per_s"] for s in rows], marker="o", label=name)
        right.plot(xs, [1e3 * s["ttft_p50_s"] for s in rows], marker="o", label=name)
    for ax, label in ((left, "requests/s"), (right, "TTFT p50 (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(label)
    right.set_yscale("log")
    left.legend()
    fig.suptitle("Server under load: shared documents, SmolLM2-135M on CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""Figures of ``prefixkv bench fleet``: one summary per phase (a policy's run, or the kill
test), the cache-aware / round-robin ratios and the targets.

Token hit rates come from the replicas (``/metrics``' prompt and cached token counters, and
``/v1/cache/stats``' Redis promotions; summed over replicas, taken as differences around the
phase), not from the clients: *hit rate* counts every cached token, those promoted from the
shared Redis included; *RAM hit rate* only those a replica found in its own RAM, which is
what routing a prefix back to the replica that computed it earns.
TTFT is client side and includes failed attempts (:class:`~prefixkv.bench.fleet_client.Outcome`).
"""

from __future__ import annotations

from typing import Any

from prefixkv.bench.fleet_client import Outcome
from prefixkv.bench.fleet_servers import CacheCounts
from prefixkv.bench.router import CACHE_AWARE, ROUND_ROBIN
from prefixkv.bench.stats import percentile

HIT_RATE_TARGET = 1.5  # cache-aware at least 1.5x round-robin's token hit rate


def summarize(
    phase: str, outcomes: tuple[Outcome, ...], seconds: float, counts: list[CacheCounts]
) -> dict[str, Any]:
    """One phase's figures: ``counts`` are each replica's counters over the phase."""
    total = CacheCounts(0, 0, 0)
    for c in counts:
        total = total.plus(c)
    ttfts = [o.ttft for o in outcomes if o.ttft is not None]
    done = [o for o in outcomes if o.reply is not None]
    return {
        "phase": phase,
        "requests": len(outcomes),
        "completed": len(done),
        "lost": len(outcomes) - len(done),
        "failed_attempts": sum(len(o.failures) for o in outcomes),
        "retried_requests": sum(1 for o in outcomes if o.failures),
        "errors": sorted({f.split(":", 1)[0] for o in outcomes for f in o.failures}),
        "seconds": round(seconds, 2),
        "req_per_s": round(len(done) / seconds, 3) if seconds > 0 else 0.0,
        "ttft_p50_ms": round(1e3 * percentile(ttfts, 50), 1) if ttfts else None,
        "ttft_p99_ms": round(1e3 * percentile(ttfts, 99), 1) if ttfts else None,
        "prompt_tokens": total.prompt_tokens,
        "cached_tokens": total.cached_tokens,
        "redis_tokens": total.tier_tokens,
        "hit_rate": round(total.hit_rate, 4),
        "ram_hit_rate": round(total.ram_hit_rate, 4),
        "per_replica_prompt_tokens": [c.prompt_tokens for c in counts],
    }


def line(s: dict[str, Any]) -> str:
    return (
        f"{s['phase']:<14} hit {100 * s['hit_rate']:5.1f}% (RAM {100 * s['ram_hit_rate']:5.1f}%)"
        f"  TTFT p50 {s['ttft_p50_ms']} ms p99 {s['ttft_p99_ms']} ms  {s['req_per_s']:.2f} req/s"
        f"  {s['completed']}/{s['requests']} done, {s['failed_attempts']} failed attempts,"
        f" {s.get('router_retries', 0)} router retries, {s['lost']} lost"
        f"  (prompt tokens per replica {s['per_replica_prompt_tokens']})"
    )


def ratio(a: float, b: float) -> float | None:
    return round(a / b, 2) if b > 0 else None


def ratios(by_phase: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """Cache-aware over round-robin: both hit rates, and req/s; TTFT p50 the other way
    (round-robin's over cache-aware's: above 1 means cache-aware answers sooner)."""
    aware, rr = by_phase[CACHE_AWARE], by_phase[ROUND_ROBIN]
    return {
        "hit_rate": ratio(aware["hit_rate"], rr["hit_rate"]),
        "ram_hit_rate": ratio(aware["ram_hit_rate"], rr["ram_hit_rate"]),
        "req_per_s": ratio(aware["req_per_s"], rr["req_per_s"]),
        "ttft_p50_speedup": ratio(rr["ttft_p50_ms"] or 0.0, aware["ttft_p50_ms"] or 0.0),
    }


def targets(by_phase: dict[str, dict[str, Any]], kill: dict[str, Any]) -> list[dict[str, Any]]:
    """The bench's targets with what was measured and whether each is met. The hit-rate
    target compares the rates themselves (cache-aware >= 1.5 x round-robin), so that a
    round-robin rate of 0 (no ratio) is met by any cache-aware hit."""
    aware, rr = by_phase[CACHE_AWARE], by_phase[ROUND_ROBIN]
    ram = ratio(aware["ram_hit_rate"], rr["ram_hit_rate"])
    rates = f"{100 * aware['ram_hit_rate']:.1f}% vs {100 * rr['ram_hit_rate']:.1f}%"
    return [
        {
            "name": f"cache-aware >= {HIT_RATE_TARGET}x round-robin's RAM token hit rate",
            "measured": f"{rates} ({ram}x; all tiers: {ratio(aware['hit_rate'], rr['hit_rate'])}x)",
            "met": aware["ram_hit_rate"] > 0
            and aware["ram_hit_rate"] >= HIT_RATE_TARGET * rr["ram_hit_rate"],
        },
        {
            "name": "no request lost when a replica is killed mid-run",
            "measured": f"{kill['lost']} lost of {kill['requests']}; "
            f"{kill['failed_attempts']} failed attempts retried by the client, "
            f"{kill.get('router_retries', 0)} retries by the router",
            "met": kill["lost"] == 0,
        },
    ]

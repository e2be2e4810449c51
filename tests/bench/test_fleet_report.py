"""``prefixkv bench fleet``'s parts that need no process: the router's command line per
policy, the policy list, the replicas' counters and the figures made from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefixkv.bench import fleet_report
from prefixkv.bench.fleet import policy_list
from prefixkv.bench.fleet_client import Outcome
from prefixkv.bench.fleet_servers import CacheCounts, counts_of
from prefixkv.bench.router import (
    CACHE_AWARE,
    KV_AWARE,
    ROUND_ROBIN,
    RouterConfig,
    Worker,
    router_argv,
)
from prefixkv.bench.serve_client import Reply

WORKERS = (
    Worker("http://127.0.0.1:1", "tcp://127.0.0.1:11"),
    Worker("http://127.0.0.1:2", "tcp://127.0.0.1:12"),
)


def test_kv_aware_subscribes_to_every_replica_events() -> None:
    argv = router_argv(Path("/bin/vllm-router"), RouterConfig(KV_AWARE, WORKERS, 16, "m"), 5, 6)
    sources = [argv[i + 1] for i, a in enumerate(argv) if a == "--kv-event-source"]
    assert sources == [
        "http://127.0.0.1:1=tcp://127.0.0.1:11",
        "http://127.0.0.1:2=tcp://127.0.0.1:12",
    ]
    assert argv[argv.index("--kv-event-block-size") + 1] == "16"
    assert argv[argv.index("--kv-event-model") + 1] == "m"
    assert argv[argv.index("--policy") + 1] == KV_AWARE


@pytest.mark.parametrize("policy", [CACHE_AWARE, ROUND_ROBIN])
def test_other_policies_read_no_events(policy: str) -> None:
    argv = router_argv(Path("/bin/vllm-router"), RouterConfig(policy, WORKERS, 16, "m"), 5, 6)
    assert "--kv-event-source" not in argv
    assert argv[argv.index("--worker-urls") + 1 : argv.index("--policy")] == [
        "http://127.0.0.1:1",
        "http://127.0.0.1:2",
    ]


def test_policy_list() -> None:
    assert policy_list("round_robin, cache_aware,round_robin") == [ROUND_ROBIN, CACHE_AWARE]
    with pytest.raises(ValueError, match="unknown policies"):
        policy_list("cache_aware,round_robin,random")
    with pytest.raises(ValueError, match="must include"):
        policy_list("cache_aware,kv_aware")


METRICS = """# TYPE prefixkv_prompt_tokens counter
prefixkv_prompt_tokens_total 1000.0
# TYPE prefixkv_cached_tokens counter
prefixkv_cached_tokens_total 640.0
"""


def test_counts_from_metrics_and_stats() -> None:
    stats = {"block_size": 16, "tiers": [{"tier": "redis", "promoted_blocks": 10}]}
    counts = counts_of(METRICS, stats)
    assert counts == CacheCounts(1000, 640, 160)
    assert counts.hit_rate == pytest.approx(0.64)
    assert counts.ram_hit_rate == pytest.approx(0.48)
    assert counts_of(METRICS, {"block_size": 16}).ram_hit_rate == pytest.approx(0.64)
    assert counts.minus(CacheCounts(400, 40, 0)) == CacheCounts(600, 600, 160)
    assert CacheCounts(0, 0, 0).hit_rate == 0.0


def reply(ttft: float) -> Reply:
    return Reply("x", ttft, ttft, (), 10, 5, 1)


def test_summary_counts_lost_and_retried_requests() -> None:
    outcomes = (
        Outcome(reply(0.1), (), 0.0),
        Outcome(reply(0.1), ("APIConnectionError: gone",), 0.5),
        Outcome(None, ("APIConnectionError: gone", "APIConnectionError: gone"), 1.0),
    )
    s = fleet_report.summarize(
        "p", outcomes, 2.0, [CacheCounts(100, 50, 0), CacheCounts(100, 0, 0)]
    )
    assert (s["completed"], s["lost"], s["failed_attempts"], s["retried_requests"]) == (2, 1, 3, 2)
    assert s["hit_rate"] == 0.25 and s["per_replica_prompt_tokens"] == [100, 100]
    assert s["ttft_p99_ms"] == pytest.approx(595.0)  # 100 and 600 ms: the retried one waited 0.5 s
    assert s["req_per_s"] == 1.0


def phase(hit: float, ram: float, lost: int = 0) -> dict[str, object]:
    return {"hit_rate": hit, "ram_hit_rate": ram, "req_per_s": 1.0, "ttft_p50_ms": 100.0,
            "lost": lost, "requests": 9, "failed_attempts": 1}  # fmt: skip


def test_targets_follow_the_rates_and_the_losses() -> None:
    phases = {CACHE_AWARE: phase(0.8, 0.6), ROUND_ROBIN: phase(0.7, 0.3)}
    assert fleet_report.ratios(phases)["ram_hit_rate"] == 2.0
    assert fleet_report.ratios(phases)["hit_rate"] == 1.14
    assert [t["met"] for t in fleet_report.targets(phases, phase(0, 0, lost=0))] == [True, True]
    short = {CACHE_AWARE: phase(0.8, 0.4), ROUND_ROBIN: phase(0.7, 0.3)}
    assert [t["met"] for t in fleet_report.targets(short, phase(0, 0, lost=1))] == [False, False]
    # round-robin found nothing in RAM: no ratio, and any cache-aware RAM hit meets it
    zero = {CACHE_AWARE: phase(0.8, 0.4), ROUND_ROBIN: phase(0.7, 0.0)}
    assert fleet_report.ratios(zero)["ram_hit_rate"] is None
    assert fleet_report.targets(zero, phase(0, 0))[0]["met"]
    nothing = {CACHE_AWARE: phase(0.8, 0.0), ROUND_ROBIN: phase(0.7, 0.0)}
    assert not fleet_report.targets(nothing, phase(0, 0))[0]["met"]

"""Figures of ``prefixkv bench serve`` from replies: latencies, hit rate, identical replies,
the minimum time, and the comparison with the best transformers setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefixkv.bench import roofline, servers
from prefixkv.bench.serve_client import Phase, Reply, gaps
from prefixkv.bench.serve_report import (
    comparison_line,
    comparisons,
    hit_rate,
    identical,
    latencies,
    line,
    summarize,
)
from prefixkv.bench.stats import percentile

RATES = roofline.MachineRates(bandwidth=1e9, gemm_flops=1e10)
SIZE = roofline.ModelSize(parameters=1_000_000, weight_bytes=4_000_000)


def reply(
    text: str = "ok",
    ttft: float = 0.5,
    cached: int | None = 10,
    arrivals: tuple[float, ...] = (0.5, 0.6, 0.8),
) -> Reply:
    return Reply(text, ttft, arrivals[-1], gaps(list(arrivals)), 100, cached, len(arrivals))


def phase(
    *replies: Reply, setting: str = "prefixkv", clients: int = 2, seconds: float = 2.0
) -> Phase:
    return Phase(setting, clients, replies, seconds)


def setting(
    name: str, kind: str = servers.PREFIXKV, max_running: int | None = None
) -> servers.Setting:
    return servers.Setting(name, kind, (), "test", max_running)


def test_gaps_between_arrivals() -> None:
    assert gaps([1.0, 1.5, 3.0]) == pytest.approx((0.5, 1.5))
    assert gaps([1.0]) == () and gaps([]) == ()


def test_percentile_interpolates() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert percentile([7.0], 99) == 7.0


def test_latencies_pool_the_gaps_of_every_reply() -> None:
    got = latencies(
        phase(reply(ttft=0.2, arrivals=(0.2, 0.3)), reply(ttft=0.4, arrivals=(0.4, 0.7)))
    )
    assert got["ttft_p50_s"] == pytest.approx(0.3)
    assert got["itl_p50_s"] == pytest.approx(0.2)


def test_latencies_without_gaps_are_none() -> None:
    got = latencies(phase(reply(arrivals=(0.5,))))
    assert got["itl_p50_s"] is None and got["itl_p99_s"] is None


def test_hit_rate_is_none_when_the_server_does_not_report_it() -> None:
    assert hit_rate(phase(reply(cached=10), reply(cached=30))) == pytest.approx(0.2)
    assert hit_rate(phase(reply(cached=10), reply(cached=None))) is None


def test_identical_counts_equal_texts_request_by_request() -> None:
    ours = phase(reply("a"), reply("b"), reply("c"))
    assert identical(ours, phase(reply("a"), reply("x"), reply("c"))) == 2


def test_summarize_uses_the_running_limit_for_the_minimum() -> None:
    got = phase(reply(), reply(), clients=2, seconds=2.0)
    free = summarize(got, got, setting("prefixkv"), RATES, SIZE, uncached=150)
    serial = summarize(
        got, got, setting("prefixkv-serial", max_running=1), RATES, SIZE, uncached=150
    )
    assert free["requests_per_s"] == 1.0 and free["output_tokens_per_s"] == 3.0
    assert free["memory_min_s"] == pytest.approx(serial["memory_min_s"] / 2)
    assert free["over_minimum"] == pytest.approx(2.0 / free["minimum_s"])
    assert "identical=ref" in line(free)


def test_line_shows_n_a_for_unreported_figures() -> None:
    got = phase(reply(cached=None, arrivals=(0.5,)), setting="tf-cb")
    ref = phase(reply(cached=None, arrivals=(0.5,)))
    text = line(summarize(got, ref, setting("tf-cb", servers.TRANSFORMERS), RATES, SIZE, 100))
    assert "hit=  n/a" in text and "ITL p50=    n/a" in text and "identical=1/1" in text


def test_comparisons_pick_the_best_transformers_setting_per_client_count() -> None:
    rows = [
        {
            "setting": "prefixkv",
            "kind": "prefixkv",
            "clients": 4,
            "requests_per_s": 2.0,
            "ttft_p50_s": 1.0,
        },
        {
            "setting": "tf-cb",
            "kind": "transformers",
            "clients": 4,
            "requests_per_s": 0.5,
            "ttft_p50_s": 4.0,
        },
        {
            "setting": "tf-cb-matched",
            "kind": "transformers",
            "clients": 4,
            "requests_per_s": 1.0,
            "ttft_p50_s": 5.0,
        },
        {
            "setting": "prefixkv",
            "kind": "prefixkv",
            "clients": 16,
            "requests_per_s": 2.0,
            "ttft_p50_s": 1.0,
        },
    ]
    (got,) = comparisons(rows)
    assert got == {
        "clients": 4,
        "peer": "tf-cb-matched",
        "requests_per_s_ratio": 2.0,
        "ttft_p50_ratio": 0.2,
    }
    assert "req/s 2.00x" in comparison_line(got)


def test_chart_writes_a_png(tmp_path: Path) -> None:
    from prefixkv.bench.serve_report import chart

    got = phase(reply(), reply())
    rows = [summarize(got, got, setting("prefixkv"), RATES, SIZE, 150)]
    chart(rows, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_the_n_cost_line_states_both_ratios() -> None:
    from prefixkv.bench.serve_n import NCost, n_line

    cost = NCost(8, (2.0, 1.0, 3.0), (3.0, 1.5, 9.0), (700,) * 6, (32,) * 3, (256,) * 3)
    assert cost.ratio == 1.5 and cost.best_ratio == 1.5
    line = n_line("prefixkv", cost)
    assert line.startswith("prefixkv: n=8 costs 1.50x one request (fastest rounds: 1.50x")
    assert "2.00/3.00, 1.00/1.50, 3.00/9.00 s" in line

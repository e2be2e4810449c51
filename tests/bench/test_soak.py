"""``prefixkv bench soak``: the flatness rule and the verdict on synthetic samples (fast), the
log and metrics readers, and a short real run on the tiny model with a Redis restart (slow)."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from prefixkv.bench import soak
from prefixkv.bench.soak_sample import (
    FINAL,
    LOAD,
    QUIET,
    ClientCounts,
    LogScan,
    Sample,
    metric_values,
)
from prefixkv.bench.soak_verdict import (
    MIB,
    Finish,
    Limits,
    RedisEvents,
    flatness,
    slope,
    verdict,
)
from tests.engine.tiny import tiny_llama, tiny_tokenizer

LIMITS = Limits(warmup_s=60, rss_growth_mib=32, rss_slope_mib_per_hour=32, fd_growth=8,
                fd_slope_per_hour=32, recovery_s=15, stall_s=25)  # fmt: skip
POOL = {"free_blocks": 10, "used_blocks": 80, "reserved_blocks": 10, "pinned_blocks": 5,
        "total_blocks": 100, "evicted_blocks": 0, "inserted_blocks": 0, "query_tokens": 1,
        "hit_tokens": 0}  # fmt: skip
IDLE = POOL | {"free_blocks": 20, "reserved_blocks": 0, "pinned_blocks": 0}
EVENTS = RedisEvents(stopped_at=120, started_at=140, errors_before_stop=0, errors_after_start=6,
                     writes_after_start=50, keys_at_end=30)  # fmt: skip
CLEAN = Finish(exit_status=0, log_errors=0, aborted=None)


def sample(t: float, rss_mib: float = 400, fds: int = 20, **changes: object) -> Sample:
    """A healthy sample at ``t`` s: served grows with time, Redis errors only in the outage."""
    redis_errors = 0 if t < EVENTS.stopped_at else 6
    fields: dict[str, object] = {
        "t": t, "kind": LOAD, "redis_up": True, "rss_bytes": int(rss_mib * MIB), "fds": fds,
        "sockets": 10, "clients": ClientCounts(int(t), 0, 0), "server_5xx": 0,
        "failed_generations": 0, "log_errors": 0, "running": 3, "waiting": 0, "preemptions": 0,
        "cache": POOL, "tiers": {"disk": {"errors": 0}, "redis": {"errors": redis_errors,
                                                                 "writes": 50 + t}},
    }  # fmt: skip
    fields.update(changes)
    return Sample(**fields)  # type: ignore[arg-type]


def run(rss: list[float] | None = None, fds: list[int] | None = None) -> list[Sample]:
    """Samples every 10 s for 300 s, quiet every 100 s, then a final one."""
    times = range(10, 301, 10)
    rss = rss or [400.0] * len(times)
    fds = fds or [20] * len(times)
    out = [
        sample(t, r, f, **({"kind": QUIET, "cache": IDLE, "running": 0} if t % 100 == 0 else {}))
        for t, r, f in zip(times, rss, fds, strict=True)
    ]
    return [*out, sample(305, 400, 12, kind=FINAL, cache=IDLE, running=0,
                         clients=out[-1].clients)]  # fmt: skip


def met(
    samples: list[Sample], redis: RedisEvents | str = EVENTS, finish: Finish = CLEAN
) -> dict[str, bool]:
    return {t.name: t.met for t in verdict(samples, redis, finish, LIMITS)}


def test_slope_is_least_squares() -> None:
    assert slope([0, 1, 2, 3], [1, 3, 5, 7]) == pytest.approx(2.0)
    assert slope([0, 1, 2, 3], [0, 1, 0, 1]) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        slope([1, 1], [0, 5])
    with pytest.raises(ValueError):
        slope([1], [0])


def test_flatness_ignores_the_warm_up_and_one_spike() -> None:
    times = [float(t) for t in range(0, 3600, 60)]
    warming = [100 + min(t, 600) / 6 for t in times]  # +100 in the first 10 minutes, then flat
    flat = flatness(times, warming, warmup_s=900)
    assert flat is not None and flat.slope_per_hour == pytest.approx(0, abs=1e-9)
    assert flat.last_half_growth == 0
    spiked = list(warming)
    spiked[-1] += 500  # one noisy sample at the very end moves the median of the last quarter not
    got = flatness(times, spiked, warmup_s=900)
    assert got is not None and got.last_half_growth == 0


def test_flatness_measures_a_leak() -> None:
    times = [float(t) for t in range(0, 3600, 60)]
    leaking = [100 + t / 3600 * 40 for t in times]  # 40 per hour
    flat = flatness(times, leaking, warmup_s=900)
    assert flat is not None and flat.slope_per_hour == pytest.approx(40)
    assert flat.last_half_growth == pytest.approx(40 * (1800 - 1800 / 4 - 60) / 3600, rel=0.1)
    assert flatness(times[:3], leaking[:3], warmup_s=0) is None


def test_a_healthy_run_meets_every_target() -> None:
    assert all(met(run()).values()), met(run())


def test_a_leak_of_rss_misses_only_the_rss_target() -> None:
    leaking = [400 + 0.5 * i for i in range(30)]  # 15 MiB in 300 s: 180 MiB/h
    got = met(run(rss=leaking))
    assert not got["RSS flat after warm-up"]
    assert [name for name, ok in got.items() if not ok] == ["RSS flat after warm-up"]


def test_descriptor_growth_in_the_last_half_is_caught_even_when_slow() -> None:
    fds = [20] * 20 + [40] * 10  # a step of 20 in the last third
    assert not met(run(fds=fds))["open descriptors flat after warm-up"]
    assert met(run(fds=[20, 21] * 15))["open descriptors flat after warm-up"]  # noise is fine


@pytest.mark.parametrize(
    ("where", "change", "target"),
    [
        (-1, {"clients": ClientCounts(300, 0, 1)}, "zero errors"),
        (-1, {"server_5xx": 1}, "zero errors"),
        (-1, {"failed_generations": 2}, "zero errors"),
        (-3, {"cache": POOL | {"free_blocks": 9}},
         "zero lost blocks (total - free - used - reserved)"),
        (-1, {"cache": IDLE | {"pinned_blocks": 1}},
         "pinned and reserved blocks back to 0 when idle"),
        (-2, {"cache": IDLE | {"reserved_blocks": 1, "free_blocks": 19}},
         "pinned and reserved blocks back to 0 when idle"),
        (-1, {"running": 1}, "pinned and reserved blocks back to 0 when idle"),
        (-1, {"tiers": {"disk": {"errors": 1}, "redis": {"errors": 6, "writes": 400}}},
         "zero disk tier errors"),
        (-1, {"tiers": {"disk": {"corrupt_blocks": 1}, "redis": {"errors": 6, "writes": 400}}},
         "zero disk tier errors"),
        (-1, {"tiers": {"disk": {"errors": 0}, "redis": {"errors": 9, "writes": 400}}},
         "zero Redis tier errors outside the outage (+15 s)"),
    ],
)  # fmt: skip
def test_each_fault_misses_its_target_and_no_other(
    where: int, change: dict[str, Any], target: str
) -> None:
    samples = run()
    samples[where] = dataclasses.replace(samples[where], **change)
    got = met(samples)
    assert not got[target]
    assert sum(not ok for ok in got.values()) == 1, got


def test_redis_errors_before_the_outage_miss_the_target() -> None:
    samples = run()
    samples[2] = dataclasses.replace(samples[2], tiers={"disk": {}, "redis": {"errors": 1}})
    assert not met(samples)["zero Redis tier errors outside the outage (+15 s)"]


def test_the_redis_restart_must_be_seen_and_reconnected() -> None:
    name = "Redis restart seen and reconnected"
    assert not met(run(), EVENTS._replace(errors_after_start=0))[name]  # the server never noticed
    assert not met(run(), EVENTS._replace(keys_at_end=0))[name]  # nothing reached the new one
    assert not met(run(), EVENTS._replace(writes_after_start=10_000))[name]
    assert not met(run(), "the run ended before the restart")[name]


def test_a_stall_a_dirty_exit_and_an_abort_each_miss_a_target() -> None:
    stall = "no stall: a request served in every 25 s after the warm-up"
    samples = run()
    samples[12] = dataclasses.replace(samples[12], clients=samples[11].clients)
    assert met(samples)[stall]  # one interval of 10 s without a reply is no stall
    for i in (13, 14):
        samples[i] = dataclasses.replace(samples[i], clients=samples[11].clients)
    assert not met(samples)[stall]  # three are: 30 s
    assert not met(run(), finish=CLEAN._replace(exit_status=1))["clean exit on SIGTERM"]
    assert not met(run(), finish=CLEAN._replace(log_errors=1))["zero errors"]
    assert not met(run(), finish=CLEAN._replace(aborted="gone"))["the server answered every sample"]
    with pytest.raises(ValueError):
        verdict([], EVENTS, CLEAN, LIMITS)


def test_log_scan_counts_errors_tracebacks_and_redis_lines(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_text(
        "INFO: prefixkv.server: serving\n"
        "WARNING: prefixkv.tiers.redis: Redis tier redis://127.0.0.1:1/0 is down (x)\n"
        "ERROR: prefixkv.engine: batch step failed\nTraceback (most recent call last):\n"
        "INFO: prefixkv.tiers.redis: Redis tier redis://127.0.0.1:1/0 is back\nERROR: half"
    )
    scan = LogScan(log)
    scan.feed()
    assert (scan.errors, scan.redis_down, scan.redis_back) == (2, 1, 1)
    with log.open("a") as f:
        f.write(" a line\n")
    scan.feed()
    assert scan.errors == 3 and scan.error_lines[-1] == "ERROR: half a line"


def test_metric_values_sum_5xx_and_failures() -> None:
    text = (
        'prefixkv_http_requests_total{endpoint="/v1/chat/completions",status="200"} 7.0\n'
        'prefixkv_http_requests_total{endpoint="/v1/chat/completions",status="503"} 2.0\n'
        'prefixkv_http_requests_total{endpoint="other",status="500"} 1.0\n'
        'prefixkv_requests_total{endpoint="chat",outcome="failed"} 3.0\n'
        'prefixkv_requests_total{endpoint="chat",outcome="completed"} 9.0\n'
        "prefixkv_num_requests_running 4.0\nprefixkv_num_requests_waiting 1.0\n"
    )
    got = metric_values(text)
    assert (got["5xx"], got["failed"], got["running"], got["waiting"]) == (3, 3, 4, 1)


def test_tier_flags_live_in_one_place() -> None:
    args = soak.parser().parse_args(["--threads", "1"])
    key = Path("/tmp/k")
    flags = soak.server_flags(args, Path("/tmp/d"), "redis://127.0.0.1:1/0", key)
    tiers = soak.tier_flags(Path("/tmp/d"), args.disk_bytes, "redis://127.0.0.1:1/0", key)
    assert flags[-len(tiers) :] == tiers and "--redis-url" in tiers and "--disk-cache" in tiers
    assert tiers[tiers.index("--tier-key-file") + 1] == str(key)  # Redis is shared: sealed
    assert flags[flags.index("--backend") + 1] == "batch"


@pytest.mark.parametrize("argv", [["--warmup", "0.6"], ["--redis-stop-at", "1"],
                                  ["--minutes", "0"], ["--disconnect-fraction", "nan"]])  # fmt: skip
def test_bad_options_are_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        soak.parser().parse_args(argv)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("soak-model") / "tiny"
    model = tiny_llama()
    model.config.max_position_embeddings = 8192  # characters: the chats grow long
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.process  # a prefixkv server and redis-servers
def test_a_short_soak_survives_a_redis_restart(tiny_dir: Path, tmp_path: Path) -> None:
    out, chart, log = tmp_path / "soak.json", tmp_path / "soak.png", tmp_path / "server.log"
    command = [sys.executable, "-m", "prefixkv.cli", "bench", "soak", "--model", str(tiny_dir)]
    command += ["--minutes", "0.75", "--interval", "3", "--quiet-every", "15", "--clients", "3"]
    command += ["--cache-bytes", "2MiB", "--block-size", "4", "--threads", "1", "--sentences", "6"]
    command += ["--documents", "12", "--redis-down", "5", "--recovery", "5", "--disk-bytes", "4MiB"]
    command += ["--redis-maxmemory", "16mb", "--rss-slope-mib", "100000", "--fd-slope", "100000"]
    command += ["--rss-growth-mib", "64", "--out", str(out), "--chart", str(chart)]
    command += ["--server-log", str(log)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["met"] and all(t["met"] for t in report["targets"])
    samples = report["samples"]
    assert [s["kind"] for s in samples].count("quiet") >= 2 and samples[-1]["kind"] == "final"
    assert any(not s["redis_up"] for s in samples) and samples[-1]["redis_up"]
    redis = report["redis"]
    assert redis["errors_after_start"] > redis["errors_before_stop"] and redis["keys_at_end"] > 0
    assert report["log"]["redis_down"] >= 1 and report["log"]["redis_back"] >= 1
    assert (
        report["clients"]["disconnects"] > 0
        and sum(report["clients"]["served_by_kind"].values()) > 0
    )
    assert set(report["clients"]["served_by_kind"]) == {"doc", "chat", "unique"}
    assert all(s["lost_blocks"] == 0 for s in samples)
    assert report["working_set"]["documents_per_pool"] > 1  # the pool evicts
    assert samples[-1]["cache"]["evicted_blocks"] > 0
    assert chart.stat().st_size > 0 and log.stat().st_size > 0
    assert "redis-server stopped" in done.stdout and "verdict: every target met" in done.stdout
    assert math.isfinite(samples[-1]["rss_bytes"]) and "Traceback" not in done.stderr


def test_the_report_prints_a_row_per_sample_and_writes_json_and_chart(tmp_path: Path) -> None:
    from prefixkv.bench import soak_report

    samples = run()
    targets = verdict(samples, EVENTS, CLEAN, LIMITS)
    extra = {"clients": {"served_by_kind": {"doc": 300}, "first_errors": []},
             "log": {"redis_down": 1, "redis_back": 1, "errors": 0, "error_lines": []}}  # fmt: skip
    report = soak_report.report_dict({"machine": {}}, samples, targets, extra)
    out, chart = tmp_path / "soak.json", tmp_path / "soak.png"
    soak_report.write(report, samples, EVENTS, out, chart)
    written = json.loads(out.read_text())
    assert written["met"] and len(written["samples"]) == len(samples)
    assert written["samples"][0]["lost_blocks"] == 0 and chart.stat().st_size > 0
    rows = [soak_report.line(s, p) for s, p in zip(samples, [None, *samples[:-1]], strict=True)]
    assert len(soak_report.TABLE_HEADER.split()) == len(rows[0].split()) == 16
    assert rows[1].split()[5] == "1.00"  # req/s: 10 served in 10 s
    lines = soak_report.summary_lines(written, samples)
    assert lines[-1] == "# verdict: every target met"
    assert sum(line.startswith("target ") for line in lines) == len(targets)

"""``prefixkv bench soak``: the table over time, the summary, the JSON and the chart."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefixkv.bench.soak_sample import FINAL, LOAD, Sample
from prefixkv.bench.soak_verdict import MIB, RedisEvents, Target

TABLE_HEADER = (
    "   min kind    RSS_MiB  fds sock  req/s  served drops errors  free/used/resv/total  lost "
    "pinned  evicted redis r.err d.err"
)


def errors(s: Sample) -> int:
    """Every error a sample counts: client side, 5xx, failed generations, log lines."""
    return s.clients.errors + s.server_5xx + s.failed_generations + s.log_errors


def rate(s: Sample, previous: Sample | None) -> float:
    """Requests served per second since ``previous`` (since the start without one)."""
    served, t = (
        (s.clients.served, s.t)
        if previous is None
        else (s.clients.served - previous.clients.served, s.t - previous.t)
    )
    return served / t if t > 0 else 0.0


def line(s: Sample, previous: Sample | None) -> str:
    """One row of the table (``TABLE_HEADER``)."""
    c = s.cache
    pool = f"{c['free_blocks']}/{c['used_blocks']}/{c['reserved_blocks']}/{c['total_blocks']}"
    return (
        f"{s.t / 60:6.2f} {s.kind:5} {s.rss_bytes / MIB:9.1f} {s.fds:4d} {s.sockets:4d} "
        f"{rate(s, previous):6.2f} {s.clients.served:7d} {s.clients.disconnects:5d} "
        f"{errors(s):6d} {pool:>21} {s.lost_blocks:5d} {c['pinned_blocks']:6d} "
        f"{c['evicted_blocks']:8d} {'up' if s.redis_up else 'DOWN':>5} "
        f"{s.tier_errors.get('redis', 0):5d} {s.tier_errors.get('disk', 0):5d}"
    )


def summary_lines(report: dict[str, Any], samples: Sequence[Sample]) -> list[str]:
    """Start and end figures, what the clients and the log saw, then the verdict."""
    first, last = samples[0], samples[-1]
    served = report["clients"]["served_by_kind"]
    lines = [
        f"# RSS {first.rss_bytes / MIB:.1f} MiB at t={first.t / 60:.1f} min, "
        f"{last.rss_bytes / MIB:.1f} MiB at the end; open descriptors {first.fds} -> {last.fds}",
        f"# served {last.clients.served} requests ({', '.join(f'{k} {v}' for k, v in served.items())}), "
        f"{last.clients.disconnects} deliberate disconnects, {errors(last)} errors; hit rate "
        f"{last.cache['hit_tokens'] / max(1, last.cache['query_tokens']):.2f}, "
        f"{last.cache['evicted_blocks']} blocks evicted, {last.preemptions} preemptions",
        f"# log: Redis tier down {report['log']['redis_down']} time(s), back "
        f"{report['log']['redis_back']} time(s); {report['log']['errors']} error lines",
    ]
    lines += [f"# client error: {e}" for e in report["clients"]["first_errors"][:5]]
    lines += [f"# server log: {e}" for e in report["log"]["error_lines"][:5]]
    for t in report["targets"]:
        lines.append(f"target {t['name']}: {t['measured']}  {'met' if t['met'] else 'NOT MET'}")
    met = all(t["met"] for t in report["targets"])
    lines.append(f"# verdict: {'every target met' if met else 'FAILED: a target was missed'}")
    return lines


def report_dict(
    context: dict[str, Any],
    samples: Sequence[Sample],
    targets: Sequence[Target],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The JSON results: ``context`` (machine, arguments...), ``extra`` (clients, log, redis),
    the targets and every sample (with its lost blocks)."""
    rows = [asdict(s) | {"lost_blocks": s.lost_blocks} for s in samples]
    return {
        **context,
        **extra,
        "targets": [t._asdict() for t in targets],
        "met": all(t.met for t in targets),
        "samples": rows,
    }


def write(
    report: dict[str, Any],
    samples: Sequence[Sample],
    redis: RedisEvents | str,
    out: Path,
    chart_path: Path,
) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    chart_path.parent.mkdir(parents=True, exist_ok=True)
    chart(samples, redis, chart_path)
    print(f"# wrote {out} and {chart_path}", flush=True)


def chart(samples: Sequence[Sample], redis: RedisEvents | str, path: Path) -> None:
    """Four panels over time (minutes) while the clients ran: RSS, open descriptors, req/s,
    cumulative errors and lost blocks; the Redis outage shaded and the quiet points dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    final = samples[-1]
    samples = [s for s in samples if s.kind != FINAL]  # taken after the clients stopped
    minutes = [s.t / 60 for s in samples]
    rates = [rate(s, p) for s, p in zip(samples, [None, *samples[:-1]], strict=True)]
    fig, axes = plt.subplots(4, 1, figsize=(11, 10), sharex=True)
    panels = [
        ([s.rss_bytes / MIB for s in samples], "RSS (MiB)", "tab:blue"),
        ([s.fds for s in samples], "open descriptors", "tab:orange"),
        (rates, "requests served / s", "tab:green"),
        (
            [errors(s) for s in samples],
            f"errors (cumulative; {errors(final)} at the end)",
            "tab:red",
        ),
    ]
    for ax, (values, label, color) in zip(axes, panels, strict=True):
        ax.plot(minutes, values, marker=".", color=color)
        ax.set_ylabel(label)
        _mark(ax, samples, redis)
    axes[3].plot(minutes, [s.lost_blocks for s in samples], color="black", label="lost blocks")
    axes[3].legend(loc="upper left")
    if isinstance(redis, RedisEvents):
        axes[0].legend(loc="lower right")
    axes[-1].set_xlabel("minutes (dotted: quiet points)")
    fig.suptitle("prefixkv bench soak")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mark(ax: Any, samples: Sequence[Sample], redis: RedisEvents | str) -> None:
    """Grid, the Redis outage shaded, the quiet points dotted."""
    ax.grid(alpha=0.3)
    if isinstance(redis, RedisEvents):
        ax.axvspan(redis.stopped_at / 60, redis.started_at / 60, color="gray", alpha=0.3,
                   label="redis-server down")  # fmt: skip
    for s in samples:
        if s.kind != LOAD:
            ax.axvline(s.t / 60, color="gray", ls=":", lw=0.8)

"""``prefixkv bench tiers``: the printed summary, the targets, the JSON and the chart."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def workset_shape(ws: Any) -> dict[str, Any]:
    return {
        "requests": len(ws.prompts),
        "working_set_blocks": ws.blocks,
        "working_set_bytes": ws.kv_bytes,
        "ram_bytes": ws.ram_bytes,
        "record_bytes": ws.record_bytes,
        "ideal_hit_rate": ws.ideal_hit_rate,
    }


def workset_header(ws: Any, args: argparse.Namespace) -> str:
    return (
        f"# workset: {args.documents} documents x {args.questions} questions in a seeded random "
        f"order, working set {ws.blocks} blocks = {ws.kv_bytes / 1e6:.0f} MB of KV, RAM budget "
        f"{ws.ram_bytes / 1e6:.0f} MB ({ws.ram_bytes / ws.kv_bytes:.2f} of it), max_tokens "
        f"{args.max_tokens}, serial engine"
    )


def all_identical(report: dict[str, Any]) -> bool:
    """Every exact setting replied exactly as its reference did."""
    rows = report.get("workset", []) + report.get("compression", [])
    ok = all(r["identical"] == r["requests"] for r in rows if r["exact"])
    for case in ("restart", "replicas"):
        got = report.get(case, {})
        if "rounds" in got:
            ok = ok and got["identical"] == len(got["rounds"])
    ok = ok and all(r.get("exact", True) for r in report.get("restore", []))
    return bool(ok)


def targets(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for row in report.get("restore", []):
        if "target" in row:
            out.append(
                {
                    "target": f"restore from {row['path']} >= {row['target']:.0f}x faster than "
                    "recomputing",
                    "value": row["speedup_vs_recompute"],
                    "met": row["met"],
                }
            )
    for row in report.get("workset", []):
        if "target" in row:
            out.append(
                {
                    "target": f"RAM + disk token hit rate >= {row['target']:.0f}x RAM only "
                    "(RAM 1/4 of the working set)",
                    "value": row["hit_vs_ram"],
                    "met": row["met"],
                }
            )
    restart = report.get("restart", {})
    if "target" in restart:
        out.append(
            {
                "target": f"first request after a restart >= {restart['target']:.0f}x faster "
                "than cold",
                "value": restart["speedup"],
                "met": restart["met"],
            }
        )
    return out


def summary_lines(report: dict[str, Any]) -> list[str]:
    from prefixkv.bench import tiers_restore, tiers_servers, tiers_workset

    lines = [tiers_restore.line(r) for r in report.get("restore", [])]
    lines += [tiers_workset.line(r) for r in report.get("workset", [])]
    lines += [tiers_workset.line(r) for r in report.get("compression", [])]
    if "rounds" in report.get("restart", {}):
        lines.append(tiers_servers.restart_line(report["restart"]))
    if "rounds" in report.get("replicas", {}):
        lines.append(tiers_servers.replicas_line(report["replicas"]))
    for t in report["targets"]:
        lines.append(f"target {t['target']}: {t['value']:.1f}x  {'met' if t['met'] else 'NOT MET'}")
    load = report.get("load_average", {})
    if load.get("start") is not None:
        lines.append(
            f"# load average (1 min) at start {load['start']:.2f}, at end {load['end']:.2f} "
            f"on {report['machine']['cores']} cores"
        )
    statuses = [r["exit_status"] for r in report.get("restart", {}).get("rounds", [])]
    statuses.append(report.get("replicas", {}).get("exit_status", 0))
    if any(statuses):
        lines.append(f"# a server exited with a nonzero status on SIGTERM: {statuses}")
    lines += [f"# note: {n}" for n in report["notes"]]
    if not report["identical"]:
        lines.append("# FAILED: an exact setting replied differently from its reference")
    return lines


def write(args: argparse.Namespace, report: dict[str, Any]) -> None:
    report["targets"] = targets(report)
    report["args"] = {k: str(v) for k, v in vars(args).items()}
    for line in summary_lines(report):
        print(line)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    args.chart.parent.mkdir(parents=True, exist_ok=True)
    chart(report, args.chart)
    print(f"# wrote {args.out} and {args.chart}")


def chart(report: dict[str, Any], path: Path) -> None:
    """Four panels: restore cost; hit rates; TTFT per setting; first requests."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    (restore, hits), (ttft, servers) = axes
    rows = report.get("restore", [])
    if rows:
        names = [r["path"] for r in rows]
        restore.bar(names, [r["ms_per_1000_p50"] for r in rows], color="tab:blue")
        for i, r in enumerate(rows[1:], start=1):
            restore.annotate(f"{r['speedup_vs_recompute']:.0f}x", (i, r["ms_per_1000_p50"]),
                             ha="center", va="bottom")  # fmt: skip
        restore.set_yscale("log")
    restore.set_ylabel("ms per 1,000 tokens (p50)")
    restore.set_title("(a) restore vs recompute")
    settings = report.get("workset", []) + report.get("compression", [])
    labels = [f"{r['case'][:4]}:{r['setting']}" for r in settings]
    hits.bar(labels, [100 * r["token_hit_rate"] for r in settings], color="tab:green")
    if settings:
        hits.axhline(100 * settings[0]["ideal_hit_rate"], color="gray", ls="--", label="ideal")
        hits.legend()
    hits.set_ylabel("token hit rate (%)")
    hits.set_title("(b, e) working set 4x RAM")
    ttft.bar(labels, [r["ttft_p50_ms"] for r in settings], color="tab:orange")
    ttft.set_ylabel("TTFT p50 (ms)")
    ttft.set_title("(b, e) TTFT")
    for ax in (hits, ttft):
        ax.tick_params(axis="x", labelrotation=30)
    bars: list[tuple[str, float]] = []
    restart, replicas = report.get("restart", {}), report.get("replicas", {})
    if "rounds" in restart:
        bars += [("restart cold", restart["cold_ttft_p50_ms"]),
                 ("restart warm disk", restart["warm_ttft_p50_ms"])]  # fmt: skip
    if "rounds" in replicas:
        bars += [("replica B cold", replicas["cold_ttft_p50_ms"]),
                 ("replica B from Redis", replicas["hit_ttft_p50_ms"])]  # fmt: skip
    servers.bar([b[0] for b in bars], [b[1] for b in bars], color="tab:purple")
    servers.set_ylabel("TTFT p50 (ms), streaming client")
    servers.set_title("(c, d) real servers")
    servers.tick_params(axis="x", labelrotation=20)
    fig.suptitle("prefixkv lower cache tiers")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

"""What ``prefixkv simulate`` prints and draws: per configuration, the token hit rate, the
prefill tokens saved and the TTFT they would save at a prefill rate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from prefixkv.whatif.records import LoggedRequest
from prefixkv.whatif.replay import ReplayResult


@dataclass(frozen=True)
class PrefillRate:
    """Prompt tokens prefilled per second, and where the figure comes from."""

    tokens_per_second: float
    source: str


def served(requests: Sequence[LoggedRequest]) -> tuple[int, int]:
    """(cached tokens, prompt tokens) the server reported for the requests it completed."""
    done = [r for r in requests if r.cached_tokens is not None]
    return sum(r.cached_tokens or 0 for r in done), sum(r.prompt_tokens for r in done)


def measured_rate(requests: Sequence[LoggedRequest]) -> PrefillRate | None:
    """The log's own prefill rate: tokens the server prefilled (prompt minus cached) over
    the TTFT of those requests, summed. TTFT also holds queueing and the first decode step,
    so this rate is lower than the model's pure prefill rate and the savings it gives lean
    high. None when no request has both figures."""
    timed = [r for r in requests if r.ttft is not None and r.cached_tokens is not None]
    tokens = sum(r.prompt_tokens - (r.cached_tokens or 0) for r in timed)
    seconds = sum(r.ttft or 0.0 for r in timed)
    if tokens <= 0 or seconds <= 0:
        return None
    return PrefillRate(tokens / seconds, f"measured from the log ({len(timed)} requests' TTFT)")


def table(results: Sequence[ReplayResult], rate: PrefillRate | None) -> str:
    """One row per configuration, aligned."""
    head = ["ram", "disk", "policy", "hit rate", "ram hits", "tokens saved", "evicted"]
    if rate is not None:
        head.append("TTFT saved/req")
    rows = [head]
    for result in results:
        config = result.config
        row = [
            _size(config.ram_bytes),
            "-" if config.disk_bytes is None else _size(config.disk_bytes),
            config.policy,
            f"{100 * result.hit_rate:.1f}%",
            f"{100 * result.ram_hit_tokens / max(result.prompt_tokens, 1):.1f}%",
            f"{result.hit_tokens:,}",
            f"{result.evicted_blocks:,}",
        ]
        if rate is not None:
            saved = result.hit_tokens / rate.tokens_per_second / max(result.requests, 1)
            row.append(f"{1000 * saved:.1f} ms")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


def plot(results: Sequence[ReplayResult], path: Path, served_rate: float | None) -> None:
    """The hit rate against RAM size, one line per policy (and disk size), with the served
    rate as a dashed line. Needs matplotlib (the ``[bench]`` extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    series: dict[str, list[ReplayResult]] = {}
    for result in results:
        disk = result.config.disk_bytes
        label = result.config.policy + ("" if disk is None else f" + disk {_size(disk)}")
        series.setdefault(label, []).append(result)
    for label, points in series.items():
        points = sorted(points, key=lambda r: r.config.ram_bytes)
        sizes = [r.config.ram_bytes / (1 << 20) for r in points]
        axes.plot(sizes, [100 * r.hit_rate for r in points], marker="o", label=label)
    if served_rate is not None:
        axes.axhline(
            100 * served_rate, linestyle="--", color="grey", label="served (at its own size)"
        )
    axes.set_xscale("log", base=2)
    ticks = sorted({r.config.ram_bytes for r in results})
    axes.set_xticks([t / (1 << 20) for t in ticks], [_size(t) for t in ticks])
    axes.minorticks_off()
    axes.set_xlabel("RAM cache")
    axes.set_ylabel("token hit rate (%)")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _size(value: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= scale:
            return f"{value / scale:g}{unit}"
    return f"{value}B"

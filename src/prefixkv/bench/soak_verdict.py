"""``prefixkv bench soak``: what "flat" means, and the verdict against the targets.

*Flat* (RSS, open descriptors), over the samples ``(t, y)`` taken under load (not the quiet
points nor the final one: idle, the server holds fewer connections), the last at ``t = T``:

- the *slope* is the ordinary least-squares slope of ``y`` over ``t`` on the samples taken
  after the warm-up (``t >= warmup_s``), in units per hour;
- the *last-half growth* is, over the samples with ``t >= T / 2``, the median of the last
  quarter of them minus the median of the first quarter (at least one sample each; medians,
  so one noisy sample moves neither end);

and a series is flat when both are at most their limits. With fewer than 4 samples after the
warm-up or 2 in the last half neither is measured, and the target is missed.

Every other target is exact: no error of any kind, no block lost from the pool (``total -
free - used - reserved == 0`` in every sample), nothing pinned or reserved at each quiet
point, the Redis restart seen and survived, no stall (a request served in every ``stall_s``
after the warm-up), and a clean exit on SIGTERM.
"""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Sequence
from typing import NamedTuple

from prefixkv.bench.soak_sample import FINAL, LOAD, Sample

MIB = 1 << 20
HOUR = 3600.0


class Flatness(NamedTuple):
    slope_per_hour: float  # least squares after the warm-up
    last_half_growth: float  # median of the last quarter - median of the first quarter


class Limits(NamedTuple):
    """The targets' thresholds."""

    warmup_s: float
    rss_growth_mib: float  # last-half growth
    rss_slope_mib_per_hour: float
    fd_growth: float
    fd_slope_per_hour: float
    recovery_s: float  # after Redis is back, its tier may still count errors this long
    stall_s: float  # the longest stretch allowed without a request served


class Target(NamedTuple):
    name: str
    measured: str
    met: bool


class RedisEvents(NamedTuple):
    """The restart, in seconds since traffic started, and the server's Redis tier counters
    read just before the stop and just after the start."""

    stopped_at: float
    started_at: float
    errors_before_stop: int
    errors_after_start: int
    writes_after_start: int
    keys_at_end: int  # in the restarted redis-server, which started empty


def slope(times: Sequence[float], values: Sequence[float]) -> float:
    """Least-squares slope of ``values`` over ``times`` (units per time unit). ValueError for
    fewer than 2 points or all times equal."""
    if len(times) != len(values) or len(times) < 2:
        raise ValueError(f"a slope needs 2+ points of equal count, got {len(times)}, {len(values)}")
    mean_t, mean_y = statistics.fmean(times), statistics.fmean(values)
    spread = sum((t - mean_t) ** 2 for t in times)
    if spread == 0:
        raise ValueError("a slope needs at least two distinct times")
    return sum((t - mean_t) * (y - mean_y) for t, y in zip(times, values, strict=True)) / spread


def flatness(times: Sequence[float], values: Sequence[float], warmup_s: float) -> Flatness | None:
    """The slope (per hour, ``times`` in seconds) after ``warmup_s`` and the last-half growth
    as the module docstring defines them; None when there are too few samples."""
    after = [(t, y) for t, y in zip(times, values, strict=True) if t >= warmup_s]
    half = [y for t, y in zip(times, values, strict=True) if t >= times[-1] / 2] if times else []
    if len(after) < 4 or len(half) < 2 or after[0][0] == after[-1][0]:
        return None
    per_hour = HOUR * slope([t for t, _ in after], [y for _, y in after])
    k = max(1, len(half) // 4)
    growth = statistics.median(half[-k:]) - statistics.median(half[:k])
    return Flatness(per_hour, growth)


def flat_target(
    name: str, flat: Flatness | None, growth: float, per_hour: float, unit: str, scale: float
) -> Target:
    """Target ``name`` met when ``flat`` exists and both its figures (divided by ``scale``)
    are at most ``growth`` and ``per_hour``."""
    if flat is None:
        return Target(name, "too few samples after the warm-up", False)
    g, s = flat.last_half_growth / scale, flat.slope_per_hour / scale
    measured = (
        f"last half {g:+.1f} {unit} (<= {growth:g}), slope {s:+.1f} {unit}/h (<= {per_hour:g})"
    )
    return Target(name, measured, g <= growth and s <= per_hour)


class Finish(NamedTuple):
    """How the run ended."""

    exit_status: int  # the server's, on SIGTERM
    log_errors: int  # error lines in its whole log, shutdown included
    aborted: str | None  # why sampling stopped early (the server died...); None: it did not


def errors_target(last: Sample, log_errors: int) -> Target:
    """No error of any kind, counted client side, server side and in the log."""
    parts = {
        "client": last.clients.errors,
        "5xx": last.server_5xx,
        "failed generations": last.failed_generations,
        "log errors": log_errors,
    }
    measured = ", ".join(f"{k} {v}" for k, v in parts.items())
    return Target("zero errors", measured, not any(parts.values()))


def pool_targets(samples: Sequence[Sample]) -> list[Target]:
    """No block lost in any sample; nothing pinned, reserved or running at the quiet points."""
    lost = max(abs(s.lost_blocks) for s in samples)
    quiet = [s for s in samples if s.kind != LOAD]
    busy = [
        (s.cache["pinned_blocks"], s.cache["reserved_blocks"], s.running + s.waiting) for s in quiet
    ]
    left = [b for b in busy if any(b)]
    return [
        Target(
            "zero lost blocks (total - free - used - reserved)",
            f"at most {lost} in {len(samples)} samples",
            lost == 0,
        ),
        Target(
            "pinned and reserved blocks back to 0 when idle",
            f"{len(quiet)} quiet points, {len(left)} not idle"
            + (f" (pinned, reserved, requests): {left[:3]}" if left else ""),
            bool(quiet) and not left,
        ),
    ]


def tier_targets(
    samples: Sequence[Sample], redis: RedisEvents | str, recovery_s: float
) -> list[Target]:
    """No tier error outside the Redis outage; the outage seen and the tier reconnected.
    ``redis``: the restart's events, or why there was none."""
    last = samples[-1]
    others = {t: n for t, n in last.tier_errors.items() if t != "redis"}
    out = [Target("zero disk tier errors", str(others), not any(others.values()))]
    if isinstance(redis, str):
        return [*out, Target("Redis restart seen and reconnected", redis, False)]
    before = [s.tier_errors.get("redis", 0) for s in samples if s.t < redis.stopped_at]
    after = [s.tier_errors.get("redis", 0) for s in samples if s.t >= redis.started_at + recovery_s]
    outside = max(before, default=0) + (after[-1] - after[0] if after else 0)
    out.append(
        Target(
            f"zero Redis tier errors outside the outage (+{recovery_s:g} s)",
            f"{outside} ({len(before)} samples before, {len(after)} after)",
            outside == 0 and len(after) >= 2,
        )
    )
    seen = redis.errors_after_start - redis.errors_before_stop
    writes = last.tier("redis", "writes") - redis.writes_after_start
    out.append(
        Target(
            "Redis restart seen and reconnected",
            f"{seen} tier errors while down, {writes:.0f} writes and {redis.keys_at_end} keys "
            "in the new redis-server after it",
            seen > 0 and writes > 0 and redis.keys_at_end > 0,
        )
    )
    return out


def served_target(samples: Sequence[Sample], warmup_s: float, stall_s: float) -> Target:
    """No stall: after the warm-up, while the clients ran, no stretch between samples longer
    than ``stall_s`` without a request served (one interval on a busy machine can pass
    without a reply by chance; a stretch of several cannot)."""
    running = [s for s in samples if s.kind != FINAL and s.t >= warmup_s]
    longest, since = 0.0, running[0] if running else None
    for a, b in itertools.pairwise(running):
        if b.clients.served > a.clients.served:
            since = b
        elif since is not None:
            longest = max(longest, b.t - since.t)
    return Target(
        f"no stall: a request served in every {stall_s:g} s after the warm-up",
        f"{samples[-1].clients.served} served; longest stretch without one {longest:.0f} s",
        len(running) >= 2 and longest <= stall_s,
    )


def verdict(
    samples: Sequence[Sample], redis: RedisEvents | str, finish: Finish, limits: Limits
) -> list[Target]:
    """Every target, in the order printed. ValueError without samples."""
    if not samples:
        raise ValueError("no samples: the server never answered")
    # Under load only: idle, the server holds fewer connections (it closes idle keep-alives).
    loaded = [s for s in samples if s.kind == LOAD]
    t = [s.t for s in loaded]
    rss = flatness(t, [s.rss_bytes for s in loaded], limits.warmup_s)
    fds = flatness(t, [s.fds for s in loaded], limits.warmup_s)
    return [
        flat_target(
            "RSS flat after warm-up",
            rss,
            limits.rss_growth_mib,
            limits.rss_slope_mib_per_hour,
            "MiB",
            MIB,
        ),
        flat_target(
            "open descriptors flat after warm-up",
            fds,
            limits.fd_growth,
            limits.fd_slope_per_hour,
            "fds",
            1,
        ),
        errors_target(samples[-1], finish.log_errors),
        *pool_targets(samples),
        *tier_targets(samples, redis, limits.recovery_s),
        served_target(samples, limits.warmup_s, limits.stall_s),
        Target("the server answered every sample", finish.aborted or "yes", finish.aborted is None),
        Target("clean exit on SIGTERM", f"status {finish.exit_status}", finish.exit_status == 0),
    ]

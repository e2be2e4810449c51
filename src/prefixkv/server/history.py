"""What the dashboard plots: the server's figures sampled once a second into a bounded ring.

Every figure the server keeps is a running total or an instant gauge (the cache's counters,
the runner's step sums, queue depths). A :class:`History` reads them all at each tick, turns
two consecutive readings into one :class:`Point` of rates over the interval (tokens/s,
hit rate over the interval, mean batch size), and keeps the last ``capacity`` points, so a
page opened now still shows the last ten minutes. Sampling costs one ``stats()`` per tenant
and a few lock acquisitions a second, whoever is watching.

A point's value that has no data in its interval (no lookup: no hit rate; no first token:
no TTFT) is ``None``, which the page draws as a gap rather than a zero.
"""

from __future__ import annotations

import asyncio
import bisect
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefixkv.cache.protocol import BlockStore, CacheStats
from prefixkv.engine.batch.canary import NO_CANARY, CanaryCounts
from prefixkv.server.latency import LatencyWindow
from prefixkv.server.metrics import tier_records
from prefixkv.server.steps import StepMetrics, StepTotals

JSON = dict[str, Any]


@dataclass(frozen=True)
class Sources:
    """Where a reading comes from: the cache, the runner's step sums, recent TTFTs, the
    scheduler's gauges and the tenants to follow (the configured keys' tenants: bounded)."""

    cache: BlockStore
    steps: StepMetrics
    ttft: LatencyWindow
    running: Callable[[], int]
    waiting: Callable[[], int]
    tenants: tuple[str, ...]
    canary: Callable[[], CanaryCounts] = NO_CANARY.counts


@dataclass(frozen=True)
class Reading:
    """Every running total and gauge at one instant (``t``: Unix seconds)."""

    t: float
    cache: CacheStats
    tenants: dict[str, CacheStats]
    tiers: dict[str, dict[str, float]]
    steps: StepTotals
    running: int
    waiting: int
    ttft: list[float | None]
    misses: dict[str, int]
    """Served miss tokens by reason (the whole cache)."""
    canary: CanaryCounts

    @classmethod
    def take(cls, sources: Sources) -> Reading:
        cache = sources.cache
        tiers = {
            str(record["tier"]): {k: float(v) for k, v in record.items() if k != "tier"}  # type: ignore[arg-type]
            for record in tier_records(cache)
        }
        return cls(
            t=time.time(),
            cache=cache.stats(),
            tenants={tenant: cache.tenant_stats(tenant) for tenant in sources.tenants},
            tiers=tiers,
            steps=sources.steps.totals(),
            running=sources.running(),
            waiting=sources.waiting(),
            ttft=sources.ttft.quantiles((0.5, 0.99)),
            misses=cache.miss_tokens(),
            canary=sources.canary(),
        )


def _rate(delta: float, seconds: float) -> float:
    return delta / seconds if seconds > 0 else 0.0


def _ratio(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _cache_rates(before: CacheStats, after: CacheStats, seconds: float) -> JSON:
    """The cache's figures over one interval: rates of its counters, its gauges at the end."""
    queried = after.query_tokens - before.query_tokens
    hit = after.hit_tokens - before.hit_tokens
    return {
        "hit_rate": _ratio(hit, queried),
        "hit_tokens_per_s": _rate(hit, seconds),
        "query_tokens_per_s": _rate(queried, seconds),
        "evicted_blocks_per_s": _rate(after.evicted_blocks - before.evicted_blocks, seconds),
        "used_blocks": after.used_blocks,
    }


def _tier_rates(before: dict[str, float], after: dict[str, float], seconds: float) -> JSON:
    reads = after["reads"] - before["reads"]
    read_seconds = after["read_seconds"] - before["read_seconds"]
    return {
        "hit_blocks_per_s": _rate(after["hit_blocks"] - before["hit_blocks"], seconds),
        "missed_lookups_per_s": _rate(after["missed_lookups"] - before["missed_lookups"], seconds),
        "read_ms": None if not reads else 1000.0 * read_seconds / reads,
        "blocks": after["blocks"],
    }


@dataclass(frozen=True)
class Point:
    """One interval's figures: ``server`` (whole-server, for the admin) and ``tenants`` (each
    followed tenant's own cache figures, the only part a tenant is shown)."""

    t: float
    server: JSON
    tenants: dict[str, JSON]

    @classmethod
    def between(cls, before: Reading, after: Reading) -> Point:
        seconds = after.t - before.t
        steps = after.steps.steps - before.steps.steps
        c = after.cache
        server = {
            **_cache_rates(before.cache, c, seconds),
            "reserved_blocks": c.reserved_blocks,
            "pinned_blocks": c.pinned_blocks,
            "free_blocks": c.free_blocks,
            "total_blocks": c.total_blocks,
            "running": after.running,
            "waiting": after.waiting,
            "batch_size": _ratio(after.steps.sequences - before.steps.sequences, steps),
            "decode_tokens_per_s": _rate(after.steps.sampled - before.steps.sampled, seconds),
            "step_tokens_per_s": _rate(after.steps.tokens - before.steps.tokens, seconds),
            "ttft_p50": after.ttft[0],
            "ttft_p99": after.ttft[1],
            **{
                f"miss_{reason}_per_s": _rate(count - before.misses.get(reason, 0), seconds)
                for reason, count in after.misses.items()
            },
            "canary_checks": after.canary.checks,
            "canary_mismatches": after.canary.mismatches,
            "tiers": {
                name: _tier_rates(before.tiers.get(name, now), now, seconds)
                for name, now in after.tiers.items()
            },
        }
        tenants = {
            tenant: _cache_rates(before.tenants.get(tenant, now), now, seconds)
            for tenant, now in after.tenants.items()
        }
        return cls(after.t, server, tenants)


class History:
    """The last ``capacity`` points, one per :meth:`sample` call after the first. Sampling
    runs on one task (:meth:`run`); reading (:meth:`since`) from any thread."""

    def __init__(self, sources: Sources, capacity: int = 600) -> None:
        self.sources = sources
        self._lock = threading.Lock()
        self._points: deque[Point] = deque(maxlen=capacity)
        self._last: Reading | None = None

    def sample(self) -> None:
        """Read every source; from the second call on, append the interval's point."""
        reading = Reading.take(self.sources)
        with self._lock:
            if self._last is not None:
                self._points.append(Point.between(self._last, reading))
            self._last = reading

    def since(self, t: float) -> list[Point]:
        """The points after Unix time ``t``, oldest first."""
        with self._lock:
            points = list(self._points)
        start = bisect.bisect_right([p.t for p in points], t)
        return points[start:]

    async def run(self, interval: float) -> None:
        """Sample every ``interval`` seconds until cancelled, off the event loop (the cache's
        lock may be busy with the runner)."""
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self.sample)

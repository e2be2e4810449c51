"""Prometheus metrics of one server, in a private registry (so two apps in one process, as in
tests, never collide).

Names: cache series are the :class:`~prefixkv.cache.CacheStats` fields, ``prefixkv_cache_<field>``
(the names ``/v1/cache/stats`` returns). Request series follow vLLM's names with ``prefixkv_``
for ``vllm:`` (``num_requests_waiting``, ``time_to_first_token_seconds``,
``e2e_request_latency_seconds``, ``prompt_tokens``, ``generation_tokens``), so its dashboards
carry over; ``cached_tokens`` is OpenAI's usage field.

Cache metrics are read from ``cache.stats()`` at scrape time rather than mirrored, so they
can never drift from the cache. Request metrics are counted by an ASGI middleware (every
HTTP request, by endpoint and status), by the scheduler's ``on_finish`` hook (TTFT,
latency and tokens of each generation, which outlives its client when that disconnects) and
by the runner's step callback (:mod:`prefixkv.server.steps`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prefixkv.cache.protocol import BlockStore, CacheStats
from prefixkv.engine.batch.canary import NO_CANARY, CanaryCounts
from prefixkv.server.latency import LatencyWindow
from prefixkv.server.scheduler import Job
from prefixkv.server.service_levels import TenantLevels
from prefixkv.server.steps import STEP_SECONDS, StepMetrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENDPOINTS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/cache/stats",
        "/v1/cache/reset",
        "/v1/cache/explain",
        "/v1/cache/pin",
        "/v1/cache/unpin",
        "/health",
        "/metrics",
        "/dashboard",
        "/v1/dashboard",
    }
)
# Seconds; CPU inference spans milliseconds (tiny models, cache hits) to minutes.
_BUCKETS = STEP_SECONDS


# CacheStats fields that only grow (Prometheus counters); the rest are gauges.
_CACHE_COUNTERS = frozenset(
    {
        "queries",
        "query_tokens",
        "hit_tokens",
        "full_hits",
        "partial_hits",
        "misses",
        "inserted_blocks",
        "evicted_blocks",
        "dropped_blocks",
    }
)


class CacheCollector(Collector):
    """Exports a CacheStats snapshot, taken at each scrape: every field as
    ``prefixkv_cache_<field>`` (counters get Prometheus' ``_total``), plus the hit rate."""

    def __init__(self, stats: Callable[[], CacheStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        for name, value in s._asdict().items():
            family = CounterMetricFamily if name in _CACHE_COUNTERS else GaugeMetricFamily
            yield family(f"prefixkv_cache_{name}", _CACHE_HELP[name], value=value)
        yield GaugeMetricFamily(
            "prefixkv_cache_hit_rate", "hit_tokens / query_tokens", value=s.hit_rate
        )


_CACHE_HELP = {
    "queries": "Cache lookups (one per request)",
    "query_tokens": "Prompt tokens looked up",
    "hit_tokens": "Prompt tokens found cached",
    "full_hits": "Lookups that found every full block cached",
    "partial_hits": "Lookups that found some but not all full blocks cached",
    "misses": "Lookups that found nothing cached",
    "inserted_blocks": "Blocks stored into the cache",
    "evicted_blocks": "Blocks evicted",
    "dropped_blocks": "Blocks not stored because the rest of the pool was pinned",
    "used_blocks": "Blocks holding cached KV",
    "free_blocks": "Blocks free in the pool",
    "total_blocks": "Blocks in the pool",
    "pinned_blocks": "Blocks held by running requests (never evicted)",
    "reserved_blocks": "Blocks of running requests not indexed (free + used + reserved = total)",
    "block_size": "Tokens per block",
    "used_bytes": "Bytes of cached KV",
    "capacity_bytes": "Bytes of the pool: the most the cache ever holds",
}


_TIER_GAUGES = frozenset({"blocks", "bytes", "capacity_bytes"})
_TIER_HELP = {
    "hit_blocks": "Verified blocks the tier supplied to lookups",
    "missed_lookups": "Lookups that asked the tier and got no block",
    "promoted_blocks": "Blocks of the tier put back into RAM",
    "verification_failures": "Records rejected on load (seal, checksum, tokens, name, model): never served",
    "deadline_stops": "Promotions that stopped reading the tier at their deadline",
    "blocks": "Records the tier holds (as far as this process knows)",
    "bytes": "Bytes of the records the tier holds",
    "capacity_bytes": "The most the tier holds (0: bounded by the store)",
    "reads": "Reads that reached the store",
    "read_seconds": "Seconds spent in reads",
    "writes": "Records written (demoted) to the tier",
    "write_seconds": "Seconds spent in writes",
    "evicted_blocks": "Records the tier removed to stay under capacity",
    "errors": "Failed tier operations (answered as misses or skipped writes)",
    "corrupt_blocks": "Damaged records the tier found and removed itself",
}


def tier_records(cache: BlockStore) -> list[dict[str, object]]:
    """One flat record per lower tier of ``cache`` (none for a RAM-only cache)."""
    return [
        {**{k: v for k, v in t._asdict().items() if k != "counters"}, **t.counters._asdict()}
        for t in cache.tier_stats()
    ]


class TierCollector(Collector):
    """Exports each lower tier's stats at each scrape as ``prefixkv_tier_<field>{tier=...}``."""

    def __init__(self, cache: BlockStore) -> None:
        self._cache = cache

    def collect(self) -> Iterator[Metric]:
        records = tier_records(self._cache)
        for field, help_text in _TIER_HELP.items():
            family = GaugeMetricFamily if field in _TIER_GAUGES else CounterMetricFamily
            metric = family(f"prefixkv_tier_{field}", help_text, labels=["tier"])
            for record in records:
                metric.add_metric([str(record["tier"])], float(record[field]))  # type: ignore[arg-type]
            if records:
                yield metric


class CanaryCollector(Collector):
    """Exports the exactness canary's counts at each scrape as ``prefixkv_canary_<field>``
    (counters; see :mod:`prefixkv.engine.batch.canary`)."""

    def __init__(self, counts: Callable[[], CanaryCounts]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        for name, value in self._counts()._asdict().items():
            yield CounterMetricFamily(f"prefixkv_canary_{name}", _CANARY_HELP[name], value=value)


_CANARY_HELP = {
    "checks": "Served prefixes recomputed without the cache and compared bit for bit",
    "mismatches": "Checks whose recomputed KV differed from the served blocks",
    "skipped": "Sampled checks not run (queue full, no room in time, shutdown)",
    "recomputed_tokens": "Prompt tokens computed again by checks (their cost)",
    "discarded_blocks": "Blocks dropped from the cache after mismatches",
}


class ServerMetrics:
    """The registry and the instruments the server updates; ``steps`` (made before the
    runner, whose steps it observes) is exported through the same registry."""

    def __init__(
        self,
        cache: BlockStore,
        steps: StepMetrics,
        queue_depth: Callable[[], int],
        running: Callable[[], int] = lambda: 0,
        tenants: Sequence[str] = (),
        canary: Callable[[], CanaryCounts] = NO_CANARY.counts,
    ) -> None:
        """``tenants``: the configured tenants, labelled in per-tenant series (see
        :mod:`prefixkv.server.service_levels`); ``canary``: the runner's canary counts."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "prefixkv_http_requests", "HTTP requests", ["endpoint", "status"], registry=r
        )
        self.generations = Counter(
            "prefixkv_requests",
            "Generation requests by API and outcome (completed, failed, skipped, stopped)",
            ["endpoint", "outcome"],
            registry=r,
        )
        self.ttft = Histogram(
            "prefixkv_time_to_first_token_seconds",
            "From arrival (queueing included) to the first generated text",
            buckets=_BUCKETS,
            registry=r,
        )
        self.latency = Histogram(
            "prefixkv_e2e_request_latency_seconds",
            "From arrival to the last token of completed generations",
            buckets=_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("prefixkv_prompt_tokens", "Prompt tokens", registry=r)
        self.cached_tokens = Counter(
            "prefixkv_cached_tokens", "Prompt tokens served from the cache", registry=r
        )
        self.generated_tokens = Counter(
            "prefixkv_generation_tokens", "Generated tokens", registry=r
        )
        queued = Gauge(
            "prefixkv_num_requests_waiting", "Requests queued for the worker", registry=r
        )
        queued.set_function(lambda: float(queue_depth()))
        active = Gauge("prefixkv_num_requests_running", "Requests generating now", registry=r)
        active.set_function(lambda: float(running()))
        self.slow_readers = Counter(
            "prefixkv_slow_reader_cancellations",
            "Requests cancelled because their client stopped reading",
            registry=r,
        )
        self.recent_ttft = LatencyWindow()
        """The last minute's TTFTs, for live quantiles (the dashboard)."""
        steps.register(r)
        r.register(CanaryCollector(canary))
        r.register(CacheCollector(cache.stats))
        r.register(TierCollector(cache))
        self.tenants = TenantLevels(cache, tenants, r)

    def watch_request_log(self, dropped: Callable[[], int]) -> None:
        """Export the request log's dropped lines (``--request-log``), read at scrape."""
        gauge = Gauge(
            "prefixkv_request_log_dropped",
            "Request log lines dropped because its writer fell behind (or failed)",
            registry=self.registry,
        )
        gauge.set_function(lambda: float(dropped()))

    def observe_job(self, job: Job) -> None:
        """Record a finished generation (called on the worker thread)."""
        self.generations.labels(job.endpoint, job.outcome).inc()
        self.tenants.observe_job(job)
        if job.slow_reader:
            self.slow_readers.inc()
        if job.first_output is not None:
            self.ttft.observe(job.first_output - job.arrived)
            self.recent_ttft.add(job.first_output - job.arrived)
        done = job.completion
        if done is None or job.outcome != "completed":
            return
        self.latency.observe((job.finished or time.perf_counter()) - job.arrived)
        self.prompt_tokens.inc(done.prompt_tokens)
        self.cached_tokens.inc(done.cached_tokens)
        self.generated_tokens.inc(done.completion_tokens)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RequestCounter:
    """ASGI middleware counting every HTTP response by endpoint and status."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"  # bounded label values
        counted = False

        async def counting_send(message: Message) -> None:
            nonlocal counted
            if message["type"] == "http.response.start" and not counted:
                counted = True
                self.metrics.requests.labels(endpoint, str(message["status"])).inc()
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        except Exception:
            if not counted:
                self.metrics.requests.labels(endpoint, "500").inc()
            raise

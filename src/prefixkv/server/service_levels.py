"""Per-tenant service levels and miss reasons, for ``/metrics`` and each tenant's stats.

Whole cache: ``prefixkv_cache_miss_tokens_total{reason}`` (the reasons of
:mod:`prefixkv.cache.explain`). Per tenant, labelled ``tenant`` with the tenant id (the
16-hex-digit digest of its API key; ``anonymous`` on a server without keys):
``prefixkv_tenant_query_tokens_total``, ``_hit_tokens_total``, ``_hit_rate``,
``_used_blocks``, ``_miss_tokens_total{reason}``, ``_cached_tokens_total`` and
``_prompt_tokens_total`` (of completed requests, as their usage says) and
``_time_to_first_token_seconds`` (a histogram). Label values are bounded: the tenants of
the configured keys, fixed at start, and the fixed reasons; never a salt or anything a
request sends. A tenant's own ``/v1/cache/stats`` carries its miss tokens and a TTFT
summary over its latest requests (:meth:`TenantLevels.ttft_summary`).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from prefixkv.cache.protocol import BlockStore
from prefixkv.cache.tenants import tenant_of
from prefixkv.server.scheduler import Job
from prefixkv.server.steps import STEP_SECONDS

ANONYMOUS_LABEL = "anonymous"
RECENT_TTFTS = 1024
"""TTFTs kept per tenant for its stats' percentiles."""


def tenant_label(tenant: str) -> str:
    return tenant or ANONYMOUS_LABEL


class MissCollector(Collector):
    """``prefixkv_cache_miss_tokens_total{reason}``, read from the cache at each scrape."""

    def __init__(self, cache: BlockStore) -> None:
        self._cache = cache

    def collect(self) -> Iterator[Metric]:
        metric = CounterMetricFamily(
            "prefixkv_cache_miss_tokens",
            "Prompt tokens that missed the cache, by reason (see /v1/cache/explain)",
            labels=["reason"],
        )
        for reason, tokens in self._cache.miss_tokens().items():
            metric.add_metric([reason], tokens)
        yield metric


class TenantCollector(Collector):
    """Each configured tenant's cache figures, read at each scrape."""

    def __init__(self, cache: BlockStore, tenants: Sequence[str]) -> None:
        self._cache = cache
        self._tenants = tuple(tenants)

    def collect(self) -> Iterator[Metric]:
        t = "prefixkv_tenant_"
        query = CounterMetricFamily(
            t + "query_tokens", "Prompt tokens looked up", labels=["tenant"]
        )
        hit = CounterMetricFamily(t + "hit_tokens", "Prompt tokens found cached", labels=["tenant"])
        rate = GaugeMetricFamily(t + "hit_rate", "hit_tokens / query_tokens", labels=["tenant"])
        used = GaugeMetricFamily(t + "used_blocks", "Blocks holding its KV", labels=["tenant"])
        miss = CounterMetricFamily(
            t + "miss_tokens", "Prompt tokens that missed, by reason", labels=["tenant", "reason"]
        )
        for tenant in self._tenants:
            label = tenant_label(tenant)
            stats = self._cache.tenant_stats(tenant)
            query.add_metric([label], stats.query_tokens)
            hit.add_metric([label], stats.hit_tokens)
            rate.add_metric([label], stats.hit_rate)
            used.add_metric([label], stats.used_blocks)
            for reason, tokens in self._cache.tenant_miss_tokens(tenant).items():
                miss.add_metric([label, reason], tokens)
        yield from (query, hit, rate, used, miss)


class TenantLevels:
    """What the server measures per tenant of its requests (TTFT, cached tokens), for the
    configured ``tenants`` only; registered in ``registry`` with the collectors above."""

    def __init__(
        self, cache: BlockStore, tenants: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self.tenants = frozenset(tenants)
        self.ttft = Histogram(
            "prefixkv_tenant_time_to_first_token_seconds",
            "From arrival to the first generated text, per tenant",
            ["tenant"],
            buckets=STEP_SECONDS,
            registry=registry,
        )
        self.cached = Counter(
            "prefixkv_tenant_cached_tokens",
            "Prompt tokens served from the cache (completed requests' usage)",
            ["tenant"],
            registry=registry,
        )
        self.prompt = Counter(
            "prefixkv_tenant_prompt_tokens",
            "Prompt tokens (completed)",
            ["tenant"],
            registry=registry,
        )
        self._recent = {tenant: deque[float](maxlen=RECENT_TTFTS) for tenant in self.tenants}
        self._lock = threading.Lock()
        registry.register(MissCollector(cache))
        registry.register(TenantCollector(cache, sorted(self.tenants)))

    def observe_job(self, job: Job) -> None:
        """Record a finished generation of a configured tenant (others are not labelled)."""
        tenant = tenant_of(job.request.namespace)
        if not isinstance(tenant, str) or tenant not in self.tenants:
            return
        label = tenant_label(tenant)
        if job.first_output is not None:
            seconds = job.first_output - job.arrived
            self.ttft.labels(label).observe(seconds)
            with self._lock:
                self._recent[tenant].append(seconds)
        done = job.completion
        if done is not None and job.outcome == "completed":
            self.cached.labels(label).inc(done.cached_tokens)
            self.prompt.labels(label).inc(done.prompt_tokens)

    def ttft_summary(self, tenant: str) -> dict[str, float | int]:
        """Over the tenant's latest ``RECENT_TTFTS`` requests: how many, p50 and p99 seconds
        (0.0 before any)."""
        with self._lock:
            recent = sorted(self._recent.get(tenant, ()))
        if not recent:
            return {"requests": 0, "p50_seconds": 0.0, "p99_seconds": 0.0}
        return {
            "requests": len(recent),
            "p50_seconds": _rank(recent, 0.5),
            "p99_seconds": _rank(recent, 0.99),
        }


def _rank(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of sorted samples (nearest rank)."""
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

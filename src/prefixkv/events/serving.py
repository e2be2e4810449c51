"""``prefixkv serve --kv-events``: a publisher for a built engine's cache, and its counts in
``/metrics`` (``prefixkv_kv_events_<field>``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from prefixkv.events.attach import attach, namer_for
from prefixkv.events.publisher import KVEventPublisher, PublisherCounts

if TYPE_CHECKING:
    from prefixkv.engine.build import Built

HELP = {
    "batches": "Event batches published (the next sequence number)",
    "events": "KV events published (block stored/removed, all cleared)",
    "dropped_reports": "Cache changes not published: the event queue was full",
    "undescribed_blocks": "Tier blocks published without tokens (description aged out)",
    "replays": "Replay requests answered",
}


def publish_events(
    built: Built, threads: int, endpoint: str, replay_endpoint: str | None
) -> KVEventPublisher:
    """A publisher on ``endpoint`` reporting ``built``'s cache (RAM and tiers), its blocks
    named as the tiers name them (the model's fingerprint with ``threads``). Raises
    ValueError for a cache that keeps nothing, zmq.ZMQError for an endpoint that cannot be
    bound."""
    from prefixkv.engine.fingerprint import arithmetic, model_fingerprint

    cache, model = built.engine.cache, built.engine.model
    computed = arithmetic(model, built.attention, threads)
    namer = namer_for(cache, model_fingerprint(model, built.geometry.layout, computed))
    publisher = KVEventPublisher(namer, endpoint, replay_endpoint=replay_endpoint)
    attach(cache, publisher)
    return publisher


class EventsCollector(Collector):
    """Exports a publisher's counts at each scrape."""

    def __init__(self, counts: Callable[[], PublisherCounts]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        counts = self._counts()
        for field in PublisherCounts._fields:
            metric = CounterMetricFamily(f"prefixkv_kv_events_{field}", HELP[field])
            metric.add_metric([], float(getattr(counts, field)))
            yield metric

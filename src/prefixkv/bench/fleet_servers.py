"""The processes of ``prefixkv bench fleet``: N ``prefixkv serve`` replicas, each publishing
its KV events, over a shared tier (one ``redis-server``, records sealed with one tier key,
as replicas sharing a Redis must) or nothing shared, and what the bench reads from them.

Replicas are :class:`~prefixkv.bench.tiers_servers.Replica` processes (the admin key in
their environment, so ``/v1/cache/stats`` is the whole-cache view). A replica's figures are
counters since its start: the bench takes differences around each phase.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import httpx
from prometheus_client.parser import text_string_to_metric_families

from prefixkv.bench.router import Worker
from prefixkv.bench.tiers_servers import ADMIN_HEADERS, RedisServer, Replica, free_port
from prefixkv.tiers.key import write_key_file


class CacheCounts(NamedTuple):
    """Token counters of one replica (or their sum over replicas)."""

    prompt_tokens: int  # of the requests it answered (/metrics: prefixkv_prompt_tokens)
    cached_tokens: int  # of those, served from its cache (prefixkv_cached_tokens): found in
    # RAM, or in Redis and promoted to RAM first
    tier_tokens: int  # tokens of the blocks promoted from Redis (/v1/cache/stats' tiers)

    def minus(self, before: CacheCounts) -> CacheCounts:
        return CacheCounts(*(a - b for a, b in zip(self, before, strict=True)))

    def plus(self, other: CacheCounts) -> CacheCounts:
        return CacheCounts(*(a + b for a, b in zip(self, other, strict=True)))

    @property
    def hit_rate(self) -> float:
        """Cached / prompt tokens, Redis hits included (0.0 before any request)."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def ram_hit_rate(self) -> float:
        """The share of prompt tokens found in the replica's own RAM: cached tokens less
        those promoted from Redis (a promoted block is counted even if a request does not
        end up using it, so this errs low)."""
        local = max(0, self.cached_tokens - self.tier_tokens)
        return local / self.prompt_tokens if self.prompt_tokens else 0.0


NO_COUNTS = CacheCounts(0, 0, 0)


def counts_of(metrics: str, stats: dict[str, Any]) -> CacheCounts:
    """The counters in a ``/metrics`` exposition and a ``/v1/cache/stats`` answer (a tier's
    promoted blocks are whole blocks of ``block_size`` tokens)."""
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
    }
    promoted = sum(int(tier["promoted_blocks"]) for tier in stats.get("tiers", []))
    return CacheCounts(
        int(samples["prefixkv_prompt_tokens_total"]),
        int(samples["prefixkv_cached_tokens_total"]),
        promoted * int(stats["block_size"]),
    )


@dataclass(frozen=True)
class FleetSpec:
    model: str
    replicas: int
    cache_bytes: int
    block_size: int
    threads: int


class SharedTier(Protocol):
    """What the replicas share below their RAM, if anything."""

    def flags(self) -> list[str]:
        """``prefixkv serve`` options that attach a replica to it."""
        ...

    def flush(self) -> None:
        """Emptied, once the replicas' writes have landed (the replicas' RAM already is)."""
        ...

    def stop(self) -> None: ...


class SharedRedis:
    """One ``redis-server`` the replicas share, records sealed with one tier key (as
    replicas sharing a Redis must)."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.redis = RedisServer(binary, workdir / "redis")
        self.key_file = workdir / "tier.key"
        write_key_file(self.key_file)

    def flags(self) -> list[str]:
        return ["--redis-url", self.redis.url, "--tier-key-file", str(self.key_file)]

    def flush(self) -> None:
        _wait_quiet(self.redis)
        self.redis.flush()

    def stop(self) -> None:
        self.redis.stop()


class NothingShared:
    """Each replica on its own RAM: what routing alone earns."""

    def flags(self) -> list[str]:
        return []

    def flush(self) -> None:
        pass

    def stop(self) -> None:
        pass


class Fleet:
    """``spec.replicas`` replicas over ``shared``, started in ``workdir``; ``stop()`` ends
    them (and ``shared``)."""

    def __init__(self, spec: FleetSpec, shared: SharedTier, workdir: Path) -> None:
        self.spec = spec
        self.workdir = workdir
        self.shared = shared
        self.replicas: list[Replica] = []
        self.workers: list[Worker] = []
        for i in range(spec.replicas):
            events = f"tcp://127.0.0.1:{free_port()}"
            flags = ["--cache-bytes", str(spec.cache_bytes), "--block-size", str(spec.block_size)]
            flags += ["--threads", str(spec.threads), *shared.flags(), "--kv-events", events]
            replica = Replica(spec.model, flags, workdir / f"replica{i}.log")
            self.replicas.append(replica)
            self.workers.append(Worker(replica.url, events))

    def wait_ready(self) -> float:
        """Seconds until the slowest replica answers /health."""
        return max(replica.wait_ready() for replica in self.replicas)

    def live(self) -> list[Replica]:
        return [r for r in self.replicas if r.process.poll() is None]

    def counts(self) -> list[CacheCounts]:
        """Each replica's counters now; a dead replica's as NO_COUNTS."""
        return [_counts(r) if r.process.poll() is None else NO_COUNTS for r in self.replicas]

    def reset(self) -> None:
        """Every live replica's RAM emptied and the shared tier flushed: the next phase
        starts cold."""
        for replica in self.live():
            response = httpx.post(
                replica.url + "/v1/cache/reset",
                json={"scope": "all"},
                headers=ADMIN_HEADERS,
                timeout=60.0,
            )
            response.raise_for_status()
        self.shared.flush()

    def stop(self) -> list[int]:
        """Every replica stopped (their exit codes; a killed one's is negative), then the
        shared tier."""
        codes = [replica.stop() for replica in self.replicas]
        self.shared.stop()
        return codes


def _wait_quiet(redis: RedisServer, quiet: float = 1.0, timeout: float = 60.0) -> None:
    """Until Redis's key count has not changed for ``quiet`` seconds: the replicas write
    blocks off the request path, and a write landing after the flush would hand the next
    phase a block it never computed."""
    deadline = time.monotonic() + timeout
    last, since = redis.keys(), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < quiet:
        time.sleep(0.1)
        now = redis.keys()
        if now != last:
            last, since = now, time.monotonic()


def _counts(replica: Replica) -> CacheCounts:
    answers = []
    for path in ("/metrics", "/v1/cache/stats"):
        response = httpx.get(replica.url + path, headers=ADMIN_HEADERS, timeout=30.0)
        response.raise_for_status()
        answers.append(response)
    return counts_of(answers[0].text, answers[1].json())

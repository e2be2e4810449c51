"""The fleet set-up of ``prefixkv bench fleet`` on the tiny model: two ``prefixkv serve``
replicas sharing a real ``redis-server``, behind a real ``vllm-router``. Each policy routes
(cache-aware and kv-aware keep one document's questions on one replica, round-robin spreads
them), and a replica killed mid-run loses no request.

vllm-router missing (the ``fleet`` extra): these tests skip, unless
``PREFIXKV_REQUIRE_ROUTER=1`` (set by ``.ci/run``), then they fail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from prefixkv.bench.fleet import kill_at
from prefixkv.bench.fleet_client import Outcome, drive_retrying
from prefixkv.bench.fleet_servers import Fleet, FleetSpec, SharedRedis
from prefixkv.bench.router import (
    CACHE_AWARE,
    INSTALL,
    KV_AWARE,
    ROUND_ROBIN,
    RouterConfig,
    RouterProcess,
    router_binary,
)
from prefixkv.bench.tiers_servers import ADMIN_HEADERS, free_port
from prefixkv.bench.workloads import Request, document_qa_workload
from tests.redis_fixtures import redis_server_path

from ..requirements import missing

pytestmark = [pytest.mark.process, pytest.mark.slow]


def router_or_skip() -> Path:
    binary = router_binary()
    if binary is None:
        missing("PREFIXKV_REQUIRE_ROUTER", f"vllm-router not found: {INSTALL}")
    return binary


@contextmanager
def started_fleet(model_dir: Path, workdir: Path) -> Iterator[Fleet]:
    """Two tiny replicas and Redis, stopped on exit."""
    router_or_skip()
    spec = FleetSpec(str(model_dir), 2, 64 << 20, 4, 1)
    started = Fleet(spec, SharedRedis(redis_server_path(), workdir), workdir)
    try:
        started.wait_ready()
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def fleet(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with started_fleet(tiny_model_dir, tmp_path_factory.mktemp("fleet")) as started:
        yield started


@contextmanager
def router(fleet: Fleet, policy: str) -> Iterator[str]:
    config = RouterConfig(policy, tuple(fleet.workers), fleet.spec.block_size, fleet.spec.model)
    log = fleet.workdir / f"router-{policy}-{time.monotonic_ns()}.log"
    process = RouterProcess(router_or_skip(), config, log, free_port(), free_port())
    try:
        process.wait_ready(ADMIN_HEADERS)
        yield process.url
    finally:
        process.stop()


def send(
    fleet: Fleet, url: str, work: list[Request], clients: int, max_tokens: int, attempts: int
) -> tuple[Outcome, ...]:
    outcomes, _ = asyncio.run(
        drive_retrying(url, fleet.spec.model, work, clients, max_tokens, attempts, ADMIN_HEADERS)
    )
    return outcomes


@pytest.mark.parametrize("policy", [CACHE_AWARE, KV_AWARE, ROUND_ROBIN])
def test_each_policy_routes(fleet: Fleet, policy: str) -> None:
    """Four questions about one document, one at a time, after a first one: prefix-aware
    policies send them all where the first went (kv_aware learns it from the replica's KV
    events), round-robin to both replicas."""
    fleet.reset()
    work = document_qa_workload(1, 5, documents=1, sentences=6, seed=3)
    with router(fleet, policy) as url:
        assert [o.failures for o in send(fleet, url, work[:1], 1, 2, 1)] == [()]
        time.sleep(2.0)  # the first request's KV events reach the router (kv_aware)
        before = fleet.counts()
        outcomes = send(fleet, url, work[1:], 1, 2, 1)
        served = [a.minus(b).prompt_tokens for a, b in zip(fleet.counts(), before, strict=True)]
    assert all(o.reply is not None and not o.failures for o in outcomes)
    if policy == ROUND_ROBIN:
        assert min(served) > 0, served
    else:
        assert sorted(served)[0] == 0 and sum(served) > 0, served


def test_a_killed_replica_loses_no_request(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a fleet of its own (it kills a replica for good). The router retries what it
    cannot connect; the client retries replies cut off mid-stream."""
    work = document_qa_workload(4, 4, documents=2, sentences=6, seed=4)
    with started_fleet(tiny_model_dir, tmp_path) as fleet, router(fleet, CACHE_AWARE) as url:
        outcomes, _ = asyncio.run(
            drive_retrying(url, fleet.spec.model, work, 4, 32, 3, ADMIN_HEADERS, kill_at(fleet, 3))
        )
    assert fleet.replicas[-1].process.poll() is not None, "the replica was not killed"
    assert "killed replica 1 after 3 requests" in capsys.readouterr().out
    lost = [i for i, o in enumerate(outcomes) if o.reply is None]
    assert lost == [], [outcomes[i].failures for i in lost]
    assert all(o.reply is not None and o.reply.completion_tokens > 0 for o in outcomes)

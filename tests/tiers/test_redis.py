"""RedisTier against a real redis-server: round trips of real records, skipped re-puts,
discards, counters, and every failure answered as a miss without raising: a server stopped,
restarted, full (evicting or refusing), or too slow, and an unreachable or malformed URL."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch

from prefixkv.cache.layout import KVLayout
from prefixkv.tiers import record
from prefixkv.tiers.codec import RawCodec, block_shape
from prefixkv.tiers.key import TierKey
from prefixkv.tiers.naming import BlockNamer, fingerprint_of
from prefixkv.tiers.redis import RedisTier
from prefixkv.tiers.seal import AeadSeal
from tests.redis_fixtures import RedisServer, StartRedis, free_port

LAYOUT = KVLayout(num_layers=30, num_kv_heads=3, head_dim=64)  # SmolLM2-135M, float32
BLOCK_SIZE = 16  # a record is 737,280 payload bytes + header and tokens
FINGERPRINT = fingerprint_of(b"test model", b"float32")
NAMESPACE = ("tenant-a", "salt-b")
TIMEOUT = 0.2
RETRY_AFTER = 0.3
LOGGER = "prefixkv.tiers.redis"
KEY = TierKey(bytes(range(32)))
SEAL = AeadSeal(KEY)


class Block(NamedTuple):
    name: bytes
    record: bytes
    expected: record.Expected


def make_blocks(count: int, seed: int = 0) -> list[Block]:
    """``count`` chained blocks of one random prompt: names by a keyed BlockNamer, records
    sealed by record.encode over RawCodec payloads."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, 49152, count * BLOCK_SIZE, dtype=np.uint32).tobytes()
    namer = BlockNamer(FINGERPRINT, BLOCK_SIZE, KEY)
    names = namer.names(tokens, NAMESPACE, count)
    parents = [namer.root(NAMESPACE), *names[:-1]]
    generator = torch.Generator().manual_seed(seed)
    blocks = []
    for i, (name, parent) in enumerate(zip(names, parents, strict=True)):
        block_tokens = tokens[i * BLOCK_SIZE * 4 : (i + 1) * BLOCK_SIZE * 4]
        kv = torch.randn(block_shape(LAYOUT, BLOCK_SIZE), generator=generator)
        payload = RawCodec().encode(kv)
        raw = record.encode(SEAL, RawCodec.id, FINGERPRINT, name, parent, block_tokens, payload)
        blocks.append(Block(name, raw, record.Expected(FINGERPRINT, name, parent, block_tokens)))
    return blocks


@pytest.fixture(scope="module")
def blocks() -> list[Block]:
    return make_blocks(16)


MakeTier = Callable[..., RedisTier]


@pytest.fixture
def make_tier() -> Iterator[MakeTier]:
    """``make_tier(url, **options)``: a RedisTier with the tests' short timeouts, closed after."""
    tiers: list[RedisTier] = []

    def make(url: str, **options: Any) -> RedisTier:
        tiers.append(RedisTier(url, **{"timeout": TIMEOUT, "retry_after": RETRY_AFTER, **options}))
        return tiers[-1]

    yield make
    for tier in tiers:
        tier.close()


def pairs(blocks: list[Block]) -> list[tuple[bytes, bytes]]:
    return [(block.name, block.record) for block in blocks]


def names(blocks: list[Block]) -> list[bytes]:
    return [block.name for block in blocks]


def timed(call: Callable[[], Any], limit: float = 2 * TIMEOUT) -> Any:
    """``call()``, asserting it returns within ``limit`` seconds."""
    start = time.monotonic()
    result = call()
    assert time.monotonic() - start < limit
    return result


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelname == "WARNING"]


def wait_past_retry() -> None:
    time.sleep(RETRY_AFTER * 1.2)


@pytest.mark.process
def test_round_trip_of_real_records(
    redis_server: RedisServer, make_tier: MakeTier, blocks: list[Block]
) -> None:
    tier = make_tier(redis_server.url)
    assert tier.name == "redis"
    tier.put_many(pairs(blocks))
    got = tier.get_many(names(blocks))
    assert got == [block.record for block in blocks]
    for raw, block in zip(got, blocks, strict=True):
        assert raw is not None
        codec, payload = record.verify(raw, block.expected, SEAL)
        assert codec == RawCodec.id
        kv = RawCodec().decode(payload, LAYOUT, BLOCK_SIZE)
        assert kv.shape == block_shape(LAYOUT, BLOCK_SIZE) and kv.dtype == LAYOUT.dtype
    assert tier.get_many([]) == []
    assert tier.counters().errors == 0


@pytest.mark.process
def test_keys_are_prefixed_hex_names_with_nothing_readable_of_the_tenant(
    redis_server: RedisServer, make_tier: MakeTier, blocks: list[Block]
) -> None:
    tier = make_tier(redis_server.url, key_prefix="pkv-test:")
    tier.put_many(pairs(blocks[:3]))
    with redis_server.client() as client:
        keys = sorted(client.keys("*"))
    assert keys == sorted(b"pkv-test:" + block.name.hex().encode() for block in blocks[:3])
    for key in keys:
        assert b"tenant" not in key and b"salt" not in key


@pytest.mark.process
def test_missing_names_are_none(
    redis_server: RedisServer, make_tier: MakeTier, blocks: list[Block]
) -> None:
    tier = make_tier(redis_server.url)
    assert tier.get_many(names(blocks[:4])) == [None] * 4
    tier.put_many(pairs(blocks[1:3]))
    assert tier.get_many(names(blocks[:4])) == [None, blocks[1].record, blocks[2].record, None]
    assert tier.counters().reads == 2
    assert tier.holds(names(blocks[:4])) == [False, True, True, False]  # reads nothing
    assert tier.counters().reads == 2 and tier.holds([]) == []


@pytest.mark.process
def test_put_of_a_held_name_is_skipped(
    redis_server: RedisServer, make_tier: MakeTier, blocks: list[Block]
) -> None:
    tier = make_tier(redis_server.url)
    tier.put_many(pairs(blocks[:2]))
    before = tier.counters()
    assert (before.writes, before.blocks) == (2, 2)
    tier.put_many([(blocks[0].name, b"other bytes"), *pairs(blocks[:2])])
    after = tier.counters()
    assert (after.writes, after.blocks, after.bytes) == (2, 2, before.bytes)
    assert tier.get_many([blocks[0].name]) == [blocks[0].record]  # not overwritten
    tier.put_many(pairs([blocks[2], blocks[2]]))  # twice in one call: written once
    assert tier.counters().writes == 3
    # Written by another replica (another tier on the same server): skipped here too.
    other = make_tier(redis_server.url)
    other.put_many(pairs(blocks[:3]))
    assert other.counters().writes == 0


@pytest.mark.process
def test_discard(redis_server: RedisServer, make_tier: MakeTier, blocks: list[Block]) -> None:
    tier = make_tier(redis_server.url)
    tier.put_many(pairs(blocks[:3]))
    tier.discard(blocks[1].name)
    assert tier.get_many(names(blocks[:3])) == [blocks[0].record, None, blocks[2].record]
    counters = tier.counters()
    assert (counters.blocks, counters.bytes) == (2, len(blocks[0].record) + len(blocks[2].record))
    tier.discard(blocks[1].name)  # not held: nothing changes, nothing raised
    tier.discard(blocks[5].name)
    assert tier.counters() == counters


@pytest.mark.process
def test_counters(redis_server: RedisServer, make_tier: MakeTier, blocks: list[Block]) -> None:
    tier = make_tier(redis_server.url)
    tier.put_many(pairs(blocks[:4]))
    tier.put_many(pairs(blocks[4:6]))
    tier.get_many(names(blocks[:8]))
    counters = tier.counters()
    assert counters.blocks == counters.writes == 6
    assert counters.bytes == sum(len(block.record) for block in blocks[:6])
    assert counters.capacity_bytes == counters.evicted_blocks == counters.errors == 0
    assert counters.reads == 1 and counters.read_seconds > 0
    assert counters.write_seconds > 0


@pytest.mark.process
def test_threads_write_and_read_at_once(
    redis_server: RedisServer, make_tier: MakeTier, blocks: list[Block]
) -> None:
    tier = make_tier(redis_server.url)
    seen: list[list[bytes | None]] = []

    def write() -> None:
        for i in range(0, len(blocks), 2):
            tier.put_many(pairs(blocks[i : i + 2]))

    def read() -> None:
        for _ in range(10):
            seen.append(tier.get_many(names(blocks[:4])))

    threads = [threading.Thread(target=write), *(threading.Thread(target=read) for _ in range(3))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    expected = [block.record for block in blocks[:4]]
    for got in seen:
        assert all(raw in (None, want) for raw, want in zip(got, expected, strict=True))
    counters = tier.counters()
    assert (counters.writes, counters.reads, counters.errors) == (len(blocks), 30, 0)


@pytest.mark.process
@pytest.mark.serial  # each call within 2 x the 0.2 s timeout
def test_a_stopped_server_costs_misses_not_errors_or_time(
    redis_server: RedisServer,
    make_tier: MakeTier,
    blocks: list[Block],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    tier = make_tier(redis_server.url)
    tier.put_many(pairs(blocks[:2]))
    redis_server.stop()
    deadline = time.monotonic() + 2.5 * RETRY_AFTER  # long enough for two probes
    calls = 0
    while time.monotonic() < deadline:
        assert timed(lambda: tier.get_many(names(blocks[:2]))) == [None, None]
        timed(lambda: tier.put_many(pairs(blocks[2:4])))
        timed(lambda: tier.discard(blocks[0].name))
        calls += 3
        time.sleep(0.01)
    counters = tier.counters()
    assert 2 <= counters.errors < calls / 2  # the breaker answered most calls at once
    assert (counters.reads, counters.writes, counters.blocks) == (0, 2, 2)
    [warning] = warnings_of(caplog)
    assert redis_server.url in warning and "down" in warning


@pytest.mark.process
def test_a_restarted_server_is_used_again_by_itself(
    redis_server: RedisServer,
    make_tier: MakeTier,
    blocks: list[Block],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    tier = make_tier(redis_server.url, retry_after=1.0)  # longer than a restart
    tier.put_many(pairs(blocks[:1]))
    redis_server.stop()
    assert tier.get_many(names(blocks[:1])) == [None]
    redis_server.start()  # the same port, empty (no persistence)
    tier.put_many(pairs(blocks[1:2]))  # the breaker is still open: dropped
    assert tier.get_many(names(blocks[1:2])) == [None]
    time.sleep(1.1)
    tier.put_many(pairs(blocks[1:2]))
    assert tier.get_many(names(blocks[:2])) == [None, blocks[1].record]
    assert tier.counters().errors == 1
    messages = [r.getMessage() for r in caplog.records if r.name == LOGGER]
    assert len(messages) == 2
    assert "down" in messages[0] and "back" in messages[1]


@pytest.mark.process
@pytest.mark.serial  # each call within 2 x the 0.2 s timeout
def test_a_server_started_after_the_tier(
    redis_executable: str,
    tmp_path: Path,
    make_tier: MakeTier,
    blocks: list[Block],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    server = RedisServer(tmp_path / "late.log", ())
    tier = timed(lambda: make_tier(server.url))
    assert len(warnings_of(caplog)) == 1
    try:
        server.start()
        wait_past_retry()
        tier.put_many(pairs(blocks[:1]))
        assert tier.get_many(names(blocks[:1])) == [blocks[0].record]
    finally:
        server.stop()


@pytest.mark.process
def test_maxmemory_eviction_by_redis_reads_as_misses(
    start_redis: StartRedis, make_tier: MakeTier, blocks: list[Block]
) -> None:
    server = start_redis("--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru")
    tier = make_tier(server.url)
    for block in blocks:
        tier.put_many(pairs([block]))
    got = tier.get_many(names(blocks))
    assert got[0] is None  # evicted by Redis to stay under 4 MB
    assert got[-1] == blocks[-1].record
    assert sum(raw is not None for raw in got) <= 5
    counters = tier.counters()
    assert counters.errors == counters.evicted_blocks == 0
    assert counters.blocks == len(blocks)  # what this process wrote: it does not see evictions


@pytest.mark.process
def test_a_full_server_that_refuses_writes(
    start_redis: StartRedis,
    make_tier: MakeTier,
    blocks: list[Block],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    server = start_redis("--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
    tier = make_tier(server.url)
    for block in blocks[:8]:
        tier.put_many(pairs([block]))
    counters = tier.counters()
    assert 0 < counters.writes < 8 and counters.errors == 8 - counters.writes
    # Error replies do not open the breaker: what was written is still read.
    got = tier.get_many(names(blocks[:8]))
    assert got[: counters.writes] == [block.record for block in blocks[: counters.writes]]
    assert got[counters.writes :] == [None] * (8 - counters.writes)
    [warning] = warnings_of(caplog)
    assert "refused" in warning and "OutOfMemoryError" in warning
    with server.client() as client:
        client.flushall()
    tier.put_many(pairs(blocks[8:9]))
    assert tier.get_many(names(blocks[8:9])) == [blocks[8].record]
    assert "accepts writes again" in caplog.records[-1].getMessage()


@pytest.mark.process
@pytest.mark.serial  # each call within 2 x the 0.2 s timeout
def test_a_slow_server_times_out_without_raising(
    redis_server: RedisServer, make_tier: MakeTier, blocks: list[Block]
) -> None:
    tier = make_tier(redis_server.url)
    tier.put_many(pairs(blocks[:2]))
    with redis_server.client() as client:
        sleeper = threading.Thread(target=client.execute_command, args=("DEBUG", "SLEEP", 1))
        sleeper.start()
        redis_server.wait_until_asleep()
        start = time.monotonic()
        assert tier.get_many(names(blocks[:2])) == [None, None]
        assert TIMEOUT * 0.9 < time.monotonic() - start < 2 * TIMEOUT
        assert tier.counters().errors == 1
        sleeper.join()
    wait_past_retry()
    # The late reply to the timed-out MGET was dropped with its connection, not read as this.
    assert tier.get_many(names(blocks[1:3])) == [blocks[1].record, None]
    assert tier.get_many(names(blocks[:2])) == [blocks[0].record, blocks[1].record]
    assert tier.counters().errors == 1


def test_an_unreachable_url_does_not_raise(
    make_tier: MakeTier, blocks: list[Block], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    tier = timed(lambda: make_tier(url))
    assert timed(lambda: tier.get_many(names(blocks[:3]))) == [None] * 3
    timed(lambda: tier.put_many(pairs(blocks[:1])))
    timed(lambda: tier.discard(blocks[0].name))
    assert tier.counters().errors == 1  # the start-up PING; since then the breaker answered
    assert len(warnings_of(caplog)) == 1


@pytest.mark.parametrize(
    "url",
    [
        "localhost:6379",
        "http://localhost:6379/0",
        "redis://",
        "redis://localhost:port/0",
        "redis://localhost:70000/0",
        "redis://localhost:6379/zero",
        "redis://localhost:6379/0?socket_timeout=1",
        "unix:///run/redis.sock",
        "redis://[::1",
    ],
)
def test_a_malformed_url_raises_naming_it(url: str) -> None:
    with pytest.raises(ValueError, match="not a Redis URL") as raised:
        RedisTier(url)
    assert repr(url) in str(raised.value)


def test_a_malformed_url_error_hides_the_password() -> None:
    with pytest.raises(ValueError, match="not a Redis URL") as raised:
        RedisTier("redis://user:hunter2@localhost:6379/db")
    assert "hunter2" not in str(raised.value) and "user:***@" in str(raised.value)


@pytest.mark.parametrize(
    "options", [{"timeout": 0}, {"timeout": float("inf")}, {"retry_after": -1}]
)
def test_bad_timeouts_raise(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RedisTier("redis://127.0.0.1:1/0", **options)


def test_close_is_idempotent_and_later_calls_miss(make_tier: MakeTier, blocks: list[Block]) -> None:
    tier = make_tier(f"redis://127.0.0.1:{free_port()}/0")
    tier.close()
    tier.close()
    assert tier.get_many(names(blocks[:1])) == [None]
    tier.put_many(pairs(blocks[:1]))
    tier.discard(blocks[0].name)
    assert tier.counters().errors == 1

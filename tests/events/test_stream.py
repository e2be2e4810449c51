"""The event stream rebuilds each medium exactly: a subscriber that knows only the wire
format follows a real tiered cache (RAM over a disk tier) through random stores, running
sequences, promotions, evictions on both levels and resets, losing messages on the way
(replayed on request), and after every step holds exactly the blocks each medium holds,
each with its parent and tokens."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefixkv.cache.paged import PrefixKVCache
from prefixkv.cache.tenants import Namespace
from prefixkv.events import KVEventPublisher, attach, namer_for
from prefixkv.tiers.disk import DiskTier
from prefixkv.tiers.key import TierKey
from prefixkv.tiers.naming import BlockNamer
from prefixkv.tiers.redis import RedisTier
from prefixkv.tiers.tiered import TieredCache
from prefixkv.tokens import as_token_bytes
from tests.redis_fixtures import StartRedis
from tests.tiers.kv import BLOCK, BLOCK_BYTES, FINGERPRINT, hot_cache, kv_of

from .subscriber import Held, Subscriber

RAM = ("CPU", None, None)
DISK = ("STORAGE", "LOCAL", "disk")
REDIS = ("STORAGE", "REMOTE", "redis")
# Prompts sharing prefixes (so stores extend, split and duplicate paths), in two tenants.
STEMS = [[1] * 8, [1] * 4 + [2] * 8, [3] * 12, [1] * 8 + [4] * 4]
NAMESPACES: list[Hashable] = [None, Namespace("b")]

prompts = st.tuples(
    st.sampled_from(range(len(STEMS))),
    st.integers(0, 9),  # a tail: the blocks past the stem differ by it
    st.integers(0, 3),  # tail blocks
    st.sampled_from(NAMESPACES),
).map(lambda p: (STEMS[p[0]] + [100 + p[1]] * (p[2] * BLOCK), p[3]))
ops = st.one_of(
    st.tuples(st.just("store"), prompts),
    st.tuples(st.just("run"), prompts),
    st.tuples(st.just("open"), prompts),  # promotes from disk first
    st.tuples(st.just("reset"), st.none()),
    st.tuples(st.just("reset_tenant"), st.sampled_from(["b", None])),
    st.tuples(st.just("lose"), st.integers(1, 3)),
)


def tiered(directory: Path, ram_blocks: int, disk_records: int) -> TieredCache:
    disk = DiskTier(directory, disk_records * (BLOCK_BYTES + 180))
    return TieredCache(hot_cache(ram_blocks), [disk], FINGERPRINT)


@contextmanager
def streamed(
    directory: Path, ram_blocks: int, disk_records: int, cache: TieredCache | None = None
) -> Iterator[tuple[TieredCache, KVEventPublisher, Subscriber]]:
    """A cache (by default RAM over a disk tier in ``directory``) whose events a publisher
    sends to a subscriber, all closed after."""
    cache = cache or tiered(directory, ram_blocks, disk_records)
    publisher = KVEventPublisher(
        namer_for(cache, FINGERPRINT), "tcp://127.0.0.1:0", replay_endpoint="tcp://127.0.0.1:0"
    )
    attach(cache, publisher)
    subscriber = Subscriber(publisher.endpoint, publisher.replay_endpoint or "")
    try:
        yield cache, publisher, subscriber
    finally:
        subscriber.close()
        publisher.close()
        cache.shutdown()


def run(cache: TieredCache, tokens: list[int], namespace: Hashable) -> None:
    """A running sequence as the batch runner drives it: open, room, commit, close."""
    table = cache.open(tokens, namespace)
    try:
        if cache.grow(table, len(tokens)):
            cache.commit(table, as_token_bytes(tokens))
    finally:
        cache.close(table)


def apply(cache: TieredCache, subscriber: Subscriber, op: tuple[str, object]) -> None:
    kind, arg = op
    if kind in ("store", "run", "open"):
        tokens, namespace = arg  # type: ignore[misc]
        if kind == "store":
            cache.hot.store(tokens, kv_of(tokens), namespace)
        elif kind == "run":
            run(cache, tokens, namespace)
        else:
            cache.close(cache.open(tokens, namespace))
    elif kind == "reset":
        cache.reset()
    elif kind == "reset_tenant":
        cache.reset_tenant(arg)
    else:
        subscriber.lose += arg  # type: ignore[operator]


def chain(namer: BlockNamer, tokens: list[int], namespace: Hashable) -> dict[bytes, Held]:
    """Every full block of ``tokens`` by name, with its parent and tokens."""
    names = namer.names(as_token_bytes(tokens), namespace, len(tokens) // BLOCK)
    return {
        name: Held(names[i - 1] if i else None, tuple(tokens[i * BLOCK : (i + 1) * BLOCK]))
        for i, name in enumerate(names)
    }


def ram_contents(
    cache: PrefixKVCache, namer: BlockNamer, seen: list[tuple[list[int], Hashable]]
) -> dict[bytes, Held]:
    """What RAM holds: the cached blocks of every prompt the test used (blocks only ever
    come from those), checked to be all the blocks the cache counts."""
    held: dict[bytes, Held] = {}
    for tokens, namespace in seen:
        cached = cache.cached(tokens, namespace)
        held.update(chain(namer, tokens[:cached], namespace))
    assert len(held) == cache.stats().used_blocks
    return held


def disk_contents(directory: Path, every: dict[bytes, Held]) -> dict[bytes, Held]:
    """What the disk holds: its record files, by name."""
    return {
        name: every[name]
        for name in (bytes.fromhex(p.stem) for p in directory.glob("prefixkv-v1/??/*.kv"))
    }


def check(
    cache: TieredCache,
    publisher: KVEventPublisher,
    subscriber: Subscriber,
    directory: Path,
    seen: list[tuple[list[int], Hashable]],
    redis_names: Callable[[], set[bytes]] | None = None,
) -> None:
    assert cache.flush(10) and publisher.flush(10)
    subscriber.sync(publisher.counts().batches)
    every: dict[bytes, Held] = {}
    for tokens, namespace in seen:
        every.update(chain(cache.namer, tokens, namespace))
    ram = ram_contents(cache.hot, cache.namer, seen)
    assert subscriber.media.get(RAM, {}) == ram
    assert subscriber.media.get(DISK, {}) == disk_contents(directory, every)
    if redis_names is not None:
        assert subscriber.media.get(REDIS, {}) == {name: every[name] for name in redis_names()}
    counts = publisher.counts()
    assert counts.dropped_reports == counts.undescribed_blocks == 0


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(ops, min_size=1, max_size=14))
def test_the_stream_rebuilds_ram_and_disk_exactly(steps: list[tuple[str, object]]) -> None:
    with tempfile.TemporaryDirectory() as tmp, streamed(Path(tmp), 6, 5) as (cache, pub, sub):
        seen: list[tuple[list[int], Hashable]] = []
        for op in steps:
            if op[0] in ("store", "run", "open"):
                seen.append(op[1])  # type: ignore[arg-type]
            apply(cache, sub, op)
            check(cache, pub, sub, Path(tmp), seen)
        assert sub.cleared == 1  # the start, once


def test_evictions_resets_and_lost_messages_are_all_exercised(tmp_path: Path) -> None:
    """One fixed sequence that certainly evicts from RAM and disk, resets, promotes and loses
    messages (the property test draws these only by chance)."""
    long, other = [5] * (8 * BLOCK), [6] * (4 * BLOCK)
    with streamed(tmp_path, 6, 8) as (cache, pub, sub):
        seen = [(long, None), (other, Namespace("b"))]
        cache.hot.store(long, kv_of(long))  # 8 blocks into 6: the first 6 (RAM and disk)
        check(cache, pub, sub, tmp_path, seen)
        sub.lose = 2
        cache.hot.store(other, kv_of(other), Namespace("b"))  # evicts 4 in RAM, 2 on disk
        cache.reset()
        check(cache, pub, sub, tmp_path, seen)
        assert sub.replays >= 1 and cache.hot.stats().used_blocks == 0
        cache.close(cache.open(other, Namespace("b")))  # promotes its 4 blocks from disk
        check(cache, pub, sub, tmp_path, seen)
        assert sub.media[RAM] and sub.media[DISK]
        (disk,) = cache.tier_stats()
        assert disk.counters.evicted_blocks > 0 and disk.promoted_blocks > 0


def test_a_full_queue_drops_and_counts_and_never_blocks(tmp_path: Path) -> None:
    cache = hot_cache(64)
    publisher = KVEventPublisher(namer_for(cache, FINGERPRINT), "tcp://127.0.0.1:0", max_queued=1)
    try:
        publisher.flush(10)  # the start's AllBlocksCleared is out: the queue is empty
        attach(cache, publisher)
        publisher._stopping = True  # park the thread: nothing drains the queue now
        publisher._thread.join(5)
        for i in range(5):
            cache.store([i] * BLOCK, kv_of([i] * BLOCK))
        assert publisher.counts().dropped_reports == 4
    finally:
        publisher.close(0.1)


def test_an_endpoint_in_use_raises_at_start() -> None:
    cache = hot_cache(4)
    first = KVEventPublisher(namer_for(cache, FINGERPRINT), "tcp://127.0.0.1:0")
    try:
        import zmq

        with pytest.raises(zmq.ZMQError):
            KVEventPublisher(namer_for(cache, FINGERPRINT), first.endpoint)
    finally:
        first.close()


@pytest.mark.process
def test_redis_writes_promotions_and_discards_are_published(
    tmp_path: Path, start_redis: StartRedis
) -> None:
    """Sealed records (the tokens come from the descriptions, never from a record): RAM of 8,
    a disk of 3 records, Redis unbounded; a record damaged in Redis is discarded when a
    promotion rejects it, and the verified one before it is copied up to the disk."""
    server = start_redis()
    disk = DiskTier(tmp_path, 3 * (BLOCK_BYTES + 180))
    tiers = [disk, RedisTier(server.url)]
    cache = TieredCache(hot_cache(8), tiers, FINGERPRINT, key=TierKey(bytes(range(32))))
    prompt = [9] * (6 * BLOCK)
    seen: list[tuple[list[int], Hashable]] = [(prompt, None)]

    def in_redis() -> set[bytes]:
        with server.client() as client:
            keys = client.keys("prefixkv:*")
        return {bytes.fromhex(key.decode()[len("prefixkv:") :]) for key in keys}

    with streamed(tmp_path, 8, 3, cache) as (cache, pub, sub):
        cache.hot.store(prompt, kv_of(prompt))  # RAM 6, disk the last 3, Redis 6
        check(cache, pub, sub, tmp_path, seen, in_redis)
        assert len(sub.media[REDIS]) == 6 and len(sub.media[DISK]) == 3
        cache.reset()
        # As if long ago: the copy up to disk must be described by the promotion itself.
        pub.translator._described.clear()
        names = cache.namer.names(as_token_bytes(prompt), None, 6)
        with server.client() as client:
            client.set("prefixkv:" + names[1].hex(), b"damaged")
        cache.close(cache.open(prompt))  # block 0 from Redis (and up to disk), 1 rejected
        check(cache, pub, sub, tmp_path, seen, in_redis)
        assert names[1] not in sub.media[REDIS] and names[0] in sub.media[DISK]
        assert len(sub.media[RAM]) == 1


def test_records_a_disk_tier_kept_from_before_are_announced_at_start(tmp_path: Path) -> None:
    """A restart: the disk's files are stored in the stream right after AllBlocksCleared, by
    name only (what a record holds is not read at start), counted as undescribed."""
    prompt = [7] * (4 * BLOCK)
    first = tiered(tmp_path, 8, 8)
    first.hot.store(prompt, kv_of(prompt))
    assert first.flush(10)
    first.shutdown()
    with streamed(tmp_path, 8, 8) as (cache, pub, sub):
        assert pub.flush(10)
        sub.sync(pub.counts().batches)
        kept = disk_contents(tmp_path, chain(cache.namer, prompt, None))
        assert len(kept) == 4 and sub.cleared == 1
        assert sub.media[DISK] == {name: Held(None, ()) for name in kept}
        assert pub.counts().undescribed_blocks == 4
        cache.close(cache.open(prompt))  # promoted: RAM's events carry the tokens
        assert cache.flush(10) and pub.flush(10)
        sub.sync(pub.counts().batches)
        assert sub.media[RAM] == kept

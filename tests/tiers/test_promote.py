"""Promotion reads no more than RAM can keep for the prompt, and stops at its deadline."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from prefixkv.cache.paged import PrefixKVCache
from prefixkv.tiers.disk import DiskTier
from prefixkv.tiers.key import TierKey
from prefixkv.tiers.protocol import Tier, TierCounters
from prefixkv.tiers.tiered import TieredCache
from tests.tiers.kv import BLOCK, FINGERPRINT, hot_cache, kv_of, opened, served

KEY = TierKey(bytes(range(64, 96)))
LONG = [7 + 3 * i for i in range(64 * BLOCK)]  # 64 blocks


class Counting:
    """A tier that counts the names asked of it, and may take ``delay`` seconds per read."""

    def __init__(self, inner: Tier, delay: float = 0.0) -> None:
        self.inner = inner
        self.name = inner.name
        self.events = inner.events
        self.delay = delay
        self.asked = 0

    def get_many(self, names: Sequence[bytes]) -> list[bytes | bytearray | None]:
        self.asked += len(names)
        time.sleep(self.delay)
        return self.inner.get_many(names)

    def holds(self, names: Sequence[bytes]) -> list[bool]:
        return self.inner.holds(names)

    def put_many(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        self.inner.put_many(records)

    def discard(self, name: bytes) -> None:
        self.inner.discard(name)

    def counters(self) -> TierCounters:
        return self.inner.counters()

    def sharing(self) -> str | None:
        return self.inner.sharing()

    def announce(self) -> None:
        self.inner.announce()

    def close(self) -> None:
        self.inner.close()


@pytest.fixture
def disk_of_64(tmp_path: Path) -> Path:
    """A disk tier holding the 64 blocks of LONG (sealed)."""
    writer = TieredCache(hot_cache(64), [DiskTier(tmp_path, 1 << 24)], FINGERPRINT, key=KEY)
    writer.hot.store(LONG, kv_of(LONG))
    assert writer.flush(10)
    writer.shutdown()
    return tmp_path


def reader(directory: Path, ram_blocks: int, **options: float) -> tuple[TieredCache, Counting]:
    tier = Counting(DiskTier(directory, 1 << 24))
    return TieredCache(hot_cache(ram_blocks), [tier], FINGERPRINT, key=KEY, **options), tier


def test_a_4_block_pool_reads_at_most_4_of_64_blocks(disk_of_64: Path) -> None:
    cache, tier = reader(disk_of_64, ram_blocks=4)
    assert cache.promote(LONG) == {"disk": 4}
    assert tier.asked <= 4
    assert served(cache, LONG) == 4 * BLOCK
    (disk,) = cache.tier_stats()
    assert disk.hit_blocks == disk.promoted_blocks == 4 and disk.verification_failures == 0


def test_a_promotion_holds_one_batch_at_a_time(
    disk_of_64: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each batch's blocks go into RAM before the next batch is read: a 64-block prompt is
    restored in four calls of 16, so a promotion never holds more than 16 records and
    payloads (a whole document's at once grew the server's heap in the soak bench)."""
    batches: list[tuple[int, int]] = []
    restore = PrefixKVCache.restore

    def spied(self: PrefixKVCache, tokens: Any, first: int, fills: Any, ns: Any = None) -> int:
        batches.append((first, len(fills)))
        return restore(self, tokens, first, fills, ns)

    monkeypatch.setattr(PrefixKVCache, "restore", spied)
    cache, _ = reader(disk_of_64, ram_blocks=64)
    assert cache.promote(LONG) == {"disk": 64}
    assert batches == [(0, 16), (16, 16), (32, 16), (48, 16)]
    assert served(cache, LONG) == 64 * BLOCK
    (disk,) = cache.tier_stats()
    assert disk.hit_blocks == disk.promoted_blocks == 64


def test_the_room_excludes_the_prompts_own_and_pinned_blocks(disk_of_64: Path) -> None:
    cache, tier = reader(disk_of_64, ram_blocks=8)
    cache.promote(LONG[: 2 * BLOCK])  # the prompt's first 2 blocks are in RAM
    other = [9_000 + i for i in range(3 * BLOCK)]
    cache.hot.store(other, kv_of(other))
    with opened(cache, other) as (count, _):  # 3 blocks pinned by a reader
        assert count == 3 * BLOCK
        tier.asked = 0
        assert cache.promote(LONG) == {"disk": 3}  # 8 - 2 own - 3 pinned
        assert tier.asked <= 3
        assert cache.cached(LONG) == 5 * BLOCK
    # Unpinned, the other prompt's blocks are evictable: the next lookup takes them.
    assert served(cache, LONG) == 8 * BLOCK


def test_a_full_pool_of_pinned_blocks_reads_nothing(disk_of_64: Path) -> None:
    cache, tier = reader(disk_of_64, ram_blocks=2)
    other = [9_000 + i for i in range(2 * BLOCK)]
    cache.hot.store(other, kv_of(other))
    with opened(cache, other):
        assert cache.promote(LONG) == {}
    assert tier.asked == 0


def test_a_slow_tier_is_cut_at_the_deadline(disk_of_64: Path) -> None:
    tier = Counting(DiskTier(disk_of_64, 1 << 24), delay=0.1)  # 0.1 s per read of 4 blocks
    cache = TieredCache(
        hot_cache(64), [tier], FINGERPRINT, key=KEY, batch_blocks=4, promote_deadline=0.25
    )
    start = time.monotonic()
    found = cache.promote(LONG)
    elapsed = time.monotonic() - start
    assert 0.25 <= elapsed < 0.25 + 0.1 + 0.1  # the deadline, the read under way, a margin
    assert found == {"disk": 12} and tier.asked == 12  # 3 reads of 4 before the deadline
    assert served(cache, LONG[: 12 * BLOCK]) == 12 * BLOCK  # what was read is kept
    (disk,) = cache.tier_stats()
    assert disk.deadline_stops == 1 and disk.missed_lookups == 0


def test_the_deadline_must_be_positive() -> None:
    with pytest.raises(ValueError, match="promote_deadline"):
        TieredCache(hot_cache(4), [], FINGERPRINT, promote_deadline=0)

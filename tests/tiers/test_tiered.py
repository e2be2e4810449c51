"""TieredCache over a DiskTier: write-through, promotion, restarts, verification."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from prefixkv.cache.tenants import Namespace
from prefixkv.tiers.disk import DiskTier
from prefixkv.tiers.key import TierKey
from prefixkv.tiers.tiered import TieredCache
from tests.tiers.kv import BLOCK, BLOCK_BYTES, FINGERPRINT, hot_cache, kv_of, kv_tensor, opened

Tiered = Callable[..., TieredCache]
KEY = TierKey(bytes(range(32, 64)))


@pytest.fixture(params=["sealed", "checksum"])
def tiered(request: pytest.FixtureRequest) -> Tiered:
    """``tiered(directory, ram_blocks=4, disk_blocks=1000)``: a RAM cache over a private disk
    tier; every test runs with records sealed by a key and with checksummed records."""
    key = KEY if request.param == "sealed" else None

    def make(directory: Path, ram_blocks: int = 4, disk_blocks: int = 1000) -> TieredCache:
        disk = DiskTier(directory, disk_blocks * (BLOCK_BYTES + 200))
        return TieredCache(hot_cache(ram_blocks), [disk], FINGERPRINT, key=key)

    return make


def prompt(seed: int, length: int = 12) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(50_000) for _ in range(length)]


def check_lookup(cache: TieredCache, tokens: list[int], namespace: object = None) -> int:
    """Look ``tokens`` up; assert the served KV is exactly theirs; return tokens served."""
    with opened(cache, tokens, namespace) as (served, got):
        assert torch.equal(got, kv_tensor(tokens)[:, :, :, :served])
    cache.check_invariants()
    return served


def fill(cache: TieredCache, count: int, length: int = 12) -> list[list[int]]:
    prompts = [prompt(i, length) for i in range(count)]
    for tokens in prompts:
        cache.hot.store(tokens, kv_of(tokens))
    assert cache.flush(10)
    return prompts


def test_blocks_evicted_from_ram_come_back_from_disk(tmp_path: Path, tiered: Tiered) -> None:
    cache = tiered(tmp_path)
    prompts = fill(cache, 5)  # 15 blocks through a RAM of 4
    assert cache.cached(prompts[0]) == 0
    assert check_lookup(cache, prompts[0]) == 12
    assert cache.cached(prompts[0]) == 12
    (disk,) = cache.tier_stats()
    assert (disk.hit_blocks, disk.promoted_blocks, disk.verification_failures) == (3, 3, 0)
    assert disk.counters.blocks == 15 and disk.counters.writes == 15


def test_a_partial_prefix_continues_from_ram_into_the_tier(tmp_path: Path, tiered: Tiered) -> None:
    cache = tiered(tmp_path, ram_blocks=8)
    tokens = prompt(1, 16)
    fill_tokens = tokens[:16]
    cache.hot.store(fill_tokens, kv_of(fill_tokens))
    assert cache.flush(10)
    cache.reset()
    cache.close(cache.open(tokens[:8]))  # RAM gets the first 2 blocks back from disk
    assert cache.cached(tokens) == 8
    assert check_lookup(cache, [*tokens, 7, 7]) == 16
    (disk,) = cache.tier_stats()
    assert disk.hit_blocks == 4


def test_a_restart_on_the_same_directory_serves_earlier_prefixes(
    tmp_path: Path, tiered: Tiered
) -> None:
    first = tiered(tmp_path)
    prompts = fill(first, 3)
    first.shutdown()
    again = tiered(tmp_path)
    for tokens in prompts:
        assert check_lookup(again, [*tokens, 1]) == 12


def test_namespaces_never_share_blocks_below_ram(tmp_path: Path, tiered: Tiered) -> None:
    cache = tiered(tmp_path)
    tokens = prompt(3)
    cache.hot.store(tokens, kv_of(tokens), Namespace("alice"))
    assert cache.flush(10)
    cache.reset()
    assert check_lookup(cache, tokens, Namespace("bob")) == 0
    assert check_lookup(cache, tokens, Namespace("alice", "salt")) == 0
    assert check_lookup(cache, tokens, Namespace("alice")) == 12


def test_a_flipped_byte_is_a_miss_counted_removed_and_never_served(
    tmp_path: Path, tiered: Tiered
) -> None:
    cache = tiered(tmp_path)
    tokens = prompt(4)
    cache.hot.store(tokens, kv_of(tokens))
    assert cache.flush(10)
    cache.reset()
    names = cache.namer.names(bytes(torch.tensor(tokens, dtype=torch.int32).numpy()), None, 3)
    victim = next(tmp_path.rglob(f"{names[1].hex()}.kv"))
    data = bytearray(victim.read_bytes())
    data[-5] ^= 0x40
    victim.write_bytes(bytes(data))
    assert check_lookup(cache, tokens) == BLOCK  # block 0 only: block 1 is damaged
    (disk,) = cache.tier_stats()
    assert disk.verification_failures == 1 and not victim.exists()


def test_a_record_planted_under_another_prompts_name_is_rejected(
    tmp_path: Path, tiered: Tiered
) -> None:
    cache = tiered(tmp_path)
    mine, other = prompt(5), prompt(6)
    for tokens in (mine, other):
        cache.hot.store(tokens, kv_of(tokens))
    assert cache.flush(10)
    cache.reset()
    as_bytes = lambda t: bytes(torch.tensor(t, dtype=torch.int32).numpy())  # noqa: E731
    target = cache.namer.names(as_bytes(mine), None, 1)[0]
    source = cache.namer.names(as_bytes(other), None, 1)[0]
    planted = next(tmp_path.rglob(f"{target.hex()}.kv"))
    planted.write_bytes(next(tmp_path.rglob(f"{source.hex()}.kv")).read_bytes())
    assert check_lookup(cache, mine) == 0
    assert cache.tier_stats()[0].verification_failures == 1


def test_blocks_of_another_model_are_never_served(tmp_path: Path, tiered: Tiered) -> None:
    cache = tiered(tmp_path)
    prompts = fill(cache, 2)
    cache.shutdown()
    other = TieredCache(hot_cache(4), [DiskTier(tmp_path, 1 << 20)], bytes(16))
    assert check_lookup(other, prompts[0]) == 0  # other names: nothing even read
    assert other.tier_stats()[0].counters.reads == 0


def test_truncated_files_are_removed_at_start(tmp_path: Path, tiered: Tiered) -> None:
    cache = tiered(tmp_path)
    prompts = fill(cache, 1)
    cache.shutdown()
    files = sorted(tmp_path.rglob("*.kv"))
    files[0].write_bytes(files[0].read_bytes()[:100])
    (tmp_path / "prefixkv-v1" / "tmp" / "999999999-1-1").write_bytes(b"half a record")
    again = tiered(tmp_path)
    assert again.tier_stats()[0].counters.corrupt_blocks == 1
    assert not files[0].exists()
    assert not any((tmp_path / "prefixkv-v1" / "tmp").iterdir())
    check_lookup(again, prompts[0])


def test_the_disk_tier_stays_under_its_capacity(tmp_path: Path, tiered: Tiered) -> None:
    cache = tiered(tmp_path, disk_blocks=5)
    fill(cache, 6)
    counters = cache.tier_stats()[0].counters
    assert counters.bytes <= counters.capacity_bytes
    assert counters.evicted_blocks == 18 - counters.blocks
    assert len(list(tmp_path.rglob("*.kv"))) == counters.blocks


def test_an_unwritable_directory_degrades_the_tier_not_the_cache(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = TieredCache(hot_cache(4), [DiskTier(blocker, 1 << 20)], FINGERPRINT)
    prompts = fill(cache, 3)
    assert check_lookup(cache, prompts[2]) == 12
    assert check_lookup(cache, prompts[0]) == 0
    assert cache.tier_stats()[0].counters.errors >= 1


@pytest.mark.parametrize("seed", range(3))
def test_random_operations_serve_only_exact_kv(tmp_path: Path, tiered: Tiered, seed: int) -> None:
    rng = random.Random(seed)
    cache = tiered(tmp_path / str(seed), ram_blocks=6, disk_blocks=20)
    pool = [prompt(seed * 100 + i, rng.choice([4, 8, 13, 20])) for i in range(12)]
    for _ in range(60):
        tokens = rng.choice(pool)
        tokens = [*tokens, rng.randrange(9)] if rng.random() < 0.3 else tokens
        if rng.random() < 0.5:
            cache.hot.store(tokens, kv_of(tokens))
        else:
            check_lookup(cache, tokens)
        if rng.random() < 0.1:
            cache.flush(10)
    cache.shutdown()


def test_a_block_the_codec_cannot_hold_ends_the_write_there(tmp_path: Path) -> None:
    from prefixkv.tiers.quantize import CODECS

    disk = DiskTier(tmp_path, 1 << 20)
    cache = TieredCache(hot_cache(8), [disk], FINGERPRINT, codec=CODECS["int8"])
    tokens = prompt(9)
    kv = kv_of(tokens)
    kv[0][0][0, BLOCK + 1, 0] = float("inf")  # in block 1: int8 cannot hold it
    assert cache.hot.store(tokens, kv) == 3
    assert cache.flush(10)
    assert disk.counters().blocks == 1 and cache.dropped_writes == 2


def test_blocks_committed_one_at_a_time_get_the_names_of_a_whole_store(
    tmp_path: Path, tiered: Tiered
) -> None:
    """A running sequence's blocks reach the writer one commit at a time (each job resumes
    the last chain); their names must equal those of one store of the whole prompt."""
    from prefixkv.tokens import TokenBytes, as_token_bytes

    cache = tiered(tmp_path / "a", ram_blocks=16)
    tokens = prompt(11, 24)
    data = cache.hot.pool  # blocks for the table come from the pool
    table = cache.open(tokens)
    assert cache.grow(table, len(tokens))
    kv = kv_tensor(tokens)  # [layers, 2, heads, tokens, dim]
    for i, block in enumerate(table.blocks):
        data.data[:, :, :, block] = kv[:, :, :, i * BLOCK : (i + 1) * BLOCK]
    ids = as_token_bytes(tokens)
    for end in range(BLOCK, len(tokens) + 1, BLOCK):  # as a batch runner commits
        cache.commit(table, TokenBytes(ids[: end * 4]))
    cache.close(table)
    assert cache.flush(10)
    other = tiered(tmp_path / "b", ram_blocks=16)
    other.hot.store(tokens, kv_of(tokens))
    assert other.flush(10)
    names = lambda root: sorted(p.name for p in root.rglob("*.kv"))  # noqa: E731
    assert names(tmp_path / "a") == names(tmp_path / "b") and len(names(tmp_path / "a")) == 6
    cache.reset()
    assert check_lookup(cache, tokens) == len(tokens)

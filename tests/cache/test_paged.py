"""PrefixKVCache and NullCache: contract details."""

from __future__ import annotations

import pytest
import torch

from prefixkv import KVLayout, NullCache, PrefixKVCache
from prefixkv.tokens import as_token_bytes

from ..kvfixtures import LAYOUT, kv_for


def make_cache(blocks: int = 8, block_size: int = 4) -> PrefixKVCache:
    return PrefixKVCache(LAYOUT, block_size, LAYOUT.block_bytes(block_size) * blocks)


def test_store_copies_only_new_blocks_and_lookup_returns_exact_kv() -> None:
    cache = make_cache()
    tokens = list(range(14))
    assert cache.store(tokens[:8], kv_for(tokens[:8])) == 2
    assert cache.store(tokens, kv_for(tokens)) == 1  # 3 full blocks, 2 cached
    with cache.lookup([*tokens, 99]) as lease:
        assert lease.num_tokens == 12
        for layer, (keys, values) in enumerate(lease.kv):
            assert keys.shape == (LAYOUT.num_kv_heads, 12, LAYOUT.head_dim)
            assert torch.equal(keys, kv_for(tokens)[layer][0][:, :12])
            assert torch.equal(values, kv_for(tokens)[layer][1][:, :12])
    stats = cache.stats()
    assert (stats.inserted_blocks, stats.used_blocks, stats.pinned_blocks) == (3, 3, 0)


def test_lease_kv_is_a_private_copy() -> None:
    cache = make_cache()
    tokens = list(range(8))
    cache.store(tokens, kv_for(tokens))
    with cache.lookup(tokens) as lease:
        lease.kv[0][0].fill_(0)
    with cache.lookup(tokens) as lease:
        assert torch.equal(lease.kv[0][0], kv_for(tokens)[0][0])


def test_batch_dim_of_one_is_accepted() -> None:
    cache = make_cache()
    tokens = list(range(8))
    kv = [(k[None], v[None]) for k, v in kv_for(tokens)]
    assert cache.store(tokens, kv) == 2


def test_full_cache_evicts_lru_but_never_pinned_blocks() -> None:
    cache = make_cache(blocks=4)
    first, second = list(range(8)), list(range(100, 108))
    cache.store(first, kv_for(first))
    lease = cache.lookup(first)
    cache.store(second, kv_for(second))
    third = list(range(200, 216))  # 4 blocks: only 2 free, 2 pinned
    assert cache.store(third, kv_for(third)) == 2
    stats = cache.stats()
    assert (stats.dropped_blocks, stats.used_blocks, stats.pinned_blocks) == (2, 4, 2)
    lease.release()
    assert cache.store(third, kv_for(third)) == 2  # now the unpinned first prompt makes room
    with cache.lookup(third) as again:
        assert again.num_tokens == 16
    with cache.lookup(first) as gone:
        assert gone.num_tokens == 0
    cache.check_invariants()


def test_stored_prefix_is_not_evicted_to_make_room_for_its_own_extension() -> None:
    cache = make_cache(blocks=3)
    tokens = list(range(20))
    cache.store(tokens[:8], kv_for(tokens[:8]))
    assert cache.store(tokens, kv_for(tokens)) == 1  # 2 cached + 1 free; 2 dropped
    with cache.lookup(tokens) as lease:
        assert lease.num_tokens == 12
    assert cache.stats().dropped_blocks == 2


def test_release_is_idempotent_and_pins_return_to_zero() -> None:
    cache = make_cache()
    tokens = list(range(8))
    cache.store(tokens, kv_for(tokens))
    lease = cache.lookup(tokens)
    assert cache.stats().pinned_blocks == 2 and not lease.released
    lease.release()
    lease.release()
    assert cache.stats().pinned_blocks == 0 and lease.released


def _bad_kv_cases() -> list[tuple[str, object, type[Exception], str]]:
    good = kv_for(list(range(8)))
    k, v = good[0]
    return [
        ("too few layers", good[:1], ValueError, "layers"),
        ("not a sequence", k, TypeError, "sequence"),
        ("not a pair", [(k,), (k,)], TypeError, "pair"),
        ("wrong seq len", [(k[:, :5], v[:, :5])] * 2, ValueError, "shape"),
        ("wrong heads", [(k[:1], v[:1])] * 2, ValueError, "shape"),
        ("wrong dtype", [(k.double(), v.double())] * 2, TypeError, "dtype"),
        ("wrong device", [(k.to("meta"), v.to("meta"))] * 2, ValueError, "meta"),
        ("not a tensor", [(k, v.tolist())] * 2, TypeError, "torch.Tensor"),
    ]


@pytest.mark.parametrize("case", _bad_kv_cases(), ids=lambda c: c[0])
def test_bad_kv_raises_and_changes_nothing(case: tuple[str, object, type[Exception], str]) -> None:
    _, kv, error, message = case
    cache = make_cache()
    cache.store(list(range(8)), kv_for(list(range(8))))
    before = cache.stats()
    with pytest.raises(error, match=message):
        cache.store(list(range(100, 108)), kv)
    assert cache.stats() == before
    cache.check_invariants()


@pytest.mark.parametrize("tokens", [[1, -1, 2, 3], [0.5] * 4, "text", [2**40] * 4, [[1, 2]]])
def test_bad_tokens_raise_and_change_nothing(tokens: object) -> None:
    cache = make_cache()
    before = cache.stats()
    with pytest.raises((TypeError, ValueError), match="token"):
        cache.lookup(tokens)
    with pytest.raises((TypeError, ValueError), match="token"):
        cache.store(tokens, kv_for([0, 0, 0, 0]))
    assert cache.stats() == before
    cache.check_invariants()


def test_capacity_must_hold_a_block() -> None:
    with pytest.raises(ValueError, match="holds no block"):
        PrefixKVCache(LAYOUT, 16, capacity_bytes=100)
    with pytest.raises(TypeError, match="KVLayout"):
        PrefixKVCache("layout", 16)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_layers"):
        KVLayout(0, 1, 1)


def test_null_cache_misses_and_validates_like_the_real_one() -> None:
    cache = NullCache(LAYOUT, 4)
    tokens = list(range(8))
    table = cache.open(tokens)
    assert (table.cached_tokens, table.blocks) == (0, [])
    assert cache.reserve(table, len(tokens)) == 0  # a cache that keeps nothing takes nothing
    assert cache.commit(table, as_token_bytes(tokens)) == 0
    cache.close(table)
    for store in (cache, make_cache()):
        with pytest.raises(ValueError, match="token"):
            store.open([-1])
    assert cache.tier_stats() == [] and cache.flush() and cache.promote(tokens) == {}
    stats = cache.stats()
    assert (stats.queries, stats.misses, stats.hit_tokens) == (1, 1, 0)

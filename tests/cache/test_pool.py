"""BlockPool: allocation and its free list, KV round trips through write / gather_into, the
partition check, and a memory footprint fixed at construction."""

from __future__ import annotations

import pytest
import torch

from prefixkv import KVLayout
from prefixkv.cache.layout import KVGeometry
from prefixkv.cache.pool import BlockPool

from ..kvfixtures import LAYOUT, kv_for
from .reachable import storage_bytes_held

BLOCK = 4


def make_pool(num_blocks: int = 8, layout: KVLayout = LAYOUT) -> BlockPool:
    return BlockPool(KVGeometry(layout, BLOCK), num_blocks, torch.device("cpu"))


def stacked(kv: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``[(keys, values)]`` per layer as one ``[layers, 2, heads, seq, dim]`` tensor."""
    return torch.stack([torch.stack(pair) for pair in kv])


def out_tensor(tokens: int, layout: KVLayout = LAYOUT) -> torch.Tensor:
    """A gather target filled with NaN, so untouched positions are recognizable."""
    shape = (layout.num_layers, 2, layout.num_kv_heads, tokens, layout.head_dim)
    return torch.full(shape, float("nan"), dtype=layout.dtype)


# --- allocate / free -------------------------------------------------------------------------


def test_allocate_takes_distinct_blocks_until_the_pool_runs_out() -> None:
    pool = make_pool(5)
    assert pool.allocate(0) == [] and pool.num_free == 5
    first = pool.allocate(3)
    assert len(first) == 3 and pool.num_free == 2
    rest = pool.allocate(10)  # fewer than asked: only what is left
    assert len(rest) == 2 and pool.num_free == 0
    assert sorted(first + rest) == list(range(5))
    assert pool.allocate(1) == []
    pool.check(first + rest)


def test_free_returns_blocks_and_recently_freed_come_back_first() -> None:
    pool = make_pool(6)
    taken = pool.allocate(6)
    assert taken == list(range(6))  # a fresh pool hands out one ascending run
    pool.free([taken[4], taken[1]])
    assert pool.num_free == 2
    assert pool.allocate(1) == [1]  # recently freed first, lowest id first
    assert pool.allocate(1) == [4]
    pool.free([5, 2, 3])
    assert pool.allocate(3) == [2, 3, 5]  # freed together, back as one ascending run
    pool.check(taken)


def test_double_free_raises() -> None:
    pool = make_pool(4)
    taken = pool.allocate(2)
    pool.free([taken[0]])
    with pytest.raises(ValueError, match=f"block {taken[0]} freed twice"):
        pool.free([taken[0]])
    never_allocated = next(b for b in range(4) if b not in taken)
    with pytest.raises(ValueError, match="freed twice"):
        pool.free([never_allocated])
    assert pool.num_free == 3
    pool.check([taken[1]])


def test_a_pool_needs_a_block() -> None:
    with pytest.raises(ValueError, match="at least one block"):
        make_pool(0)


# --- write / gather_into ---------------------------------------------------------------------


def test_write_then_gather_round_trips_in_block_order() -> None:
    pool = make_pool(8)
    tokens = list(range(12))  # 3 blocks
    kv = kv_for(tokens)
    blocks = [5, 0, 3]  # deliberately not in pool order
    pool.write(blocks, kv, first_token=0)
    out = out_tensor(12)
    pool.gather_into(blocks, out)
    assert torch.equal(out, stacked(kv))
    out = out_tensor(8)
    pool.gather_into([blocks[2], blocks[0]], out)  # any order, any subset
    expected = stacked(kv)
    assert torch.equal(out[:, :, :, :4], expected[:, :, :, 8:12])
    assert torch.equal(out[:, :, :, 4:], expected[:, :, :, :4])


def test_write_takes_the_tokens_from_first_token_on() -> None:
    pool = make_pool(4)
    tokens = list(range(14))
    kv = kv_for(tokens)
    pool.write([2, 1], kv, first_token=4)  # tokens 4..11; the last 2 (a partial block) stay out
    out = out_tensor(8)
    pool.gather_into([2, 1], out)
    assert torch.equal(out, stacked(kv)[:, :, :, 4:12])


def test_write_of_no_blocks_changes_nothing() -> None:
    pool = make_pool(2)
    pool.write([0], kv_for(list(range(4))), first_token=0)
    before = pool.data.clone()
    pool.write([], kv_for(list(range(4))), first_token=0)
    assert torch.equal(pool.data.view(torch.int32), before.view(torch.int32))  # bits: NaN too


@pytest.mark.parametrize("total", [8, 11, 16], ids=["exact", "partial-block", "longer"])
@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "strided"])
def test_gather_into_fills_only_the_gathered_tokens(total: int, contiguous: bool) -> None:
    """Both paths: straight into ``out`` (contiguous, a multiple of the block size) and through
    a temporary (anything else). Positions past the gathered blocks are left untouched."""
    pool = make_pool(4)
    tokens = list(range(8))
    kv = kv_for(tokens)
    pool.write([3, 1], kv, first_token=0)
    if contiguous:
        out = out_tensor(total)
    else:  # the same shape, with tokens and head_dim swapped in memory
        out = out_tensor(total).transpose(3, 4).contiguous().transpose(3, 4)
        assert not out.is_contiguous()
    pool.gather_into([3, 1], out)
    assert torch.equal(out[:, :, :, :8], stacked(kv))
    assert torch.isnan(out[:, :, :, 8:]).all()


def test_round_trip_keeps_the_layout_dtype() -> None:
    layout = KVLayout(num_layers=1, num_kv_heads=1, head_dim=2, dtype=torch.bfloat16)
    pool = make_pool(2, layout)
    kv = kv_for(list(range(4)), layout)
    pool.write([1], kv, first_token=0)
    out = out_tensor(4, layout)
    pool.gather_into([1], out)
    assert out.dtype == torch.bfloat16 and torch.equal(out, stacked(kv))


# --- check -----------------------------------------------------------------------------------


def test_check_accepts_a_consistent_pool() -> None:
    pool = make_pool(4)
    taken = pool.allocate(3)
    pool.free(taken[:1])
    pool.check(taken[1:])


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda pool, used: pool._free.append(pool._free[0]), "free list holds a block twice"),
        (lambda pool, used: used.append(pool._free[0]), "both free and in use"),
        (lambda pool, used: used.pop(), "1 in use \\+ 2 free != 4 blocks"),
        (lambda pool, used: pool._is_free.__setitem__(used[0], 1), "free flags disagree"),
    ],
    ids=["free-twice", "free-and-used", "leaked", "flags"],
)
def test_check_catches_corruption(corrupt: object, message: str) -> None:
    pool = make_pool(4)
    used = pool.allocate(2)
    pool.check(used)
    corrupt(pool, used)  # type: ignore[operator]
    with pytest.raises(AssertionError, match=message):
        pool.check(used)


# --- memory ----------------------------------------------------------------------------------


def test_memory_is_allocated_once_and_never_grows() -> None:
    """Counted from what the pool really holds (every tensor storage reachable from it), not
    from its own ``nbytes``: one storage of 6 blocks, the same one after 40 rounds of
    allocate, write, gather and free."""
    pool = make_pool(6)
    size = 6 * LAYOUT.block_bytes(BLOCK)
    assert storage_bytes_held(pool) == size == pool.nbytes
    storage = pool.data.untyped_storage().data_ptr()
    held: list[list[int]] = []
    for start in range(0, 200, 5):
        if pool.num_free < 2:
            pool.free(held.pop(0))
        blocks = pool.allocate(2)
        tokens = list(range(start, start + 8))
        pool.write(blocks, kv_for(tokens), first_token=0)
        out = out_tensor(8)
        pool.gather_into(blocks, out)
        assert torch.equal(out, stacked(kv_for(tokens)))
        held.append(blocks)
        # Conservation: every block is held by exactly one caller or free.
        assert sorted([b for run in held for b in run] + pool._free) == list(range(6))
    assert pool.allocate(100) == []  # asking for more never grows the pool
    assert pool.data.untyped_storage().data_ptr() == storage
    assert storage_bytes_held(pool) == size

"""Block tables (open/grow/commit/close) of PrefixKVCache and NullCache, against a model.

The machine runs several tables over a small pool the way the batch runner does (open on a
prompt, grow before writing, write each fed token's KV into its slot, commit what was fed,
close), interleaved with ``store``, ``lookup`` + release and the evictions their pressure
causes. The KV written for a token depends on its whole prefix (``kv_for``), so a block
served or indexed for the wrong tokens shows up as a value mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from prefixkv.cache import Namespace, NullCache, PrefixKVCache
from prefixkv.cache.lease import Lease
from prefixkv.cache.table import BlockTable
from prefixkv.index.records import Match
from prefixkv.tokens import TokenBytes, as_token_bytes

from ..kvfixtures import LAYOUT, kv_for

tokens_st = st.lists(st.integers(0, 2), max_size=10)
MAX_TABLES = 4


@dataclass
class Running:
    """A table and what the model knows of it: its tokens, and how many have KV written."""

    table: BlockTable
    tokens: list[int]
    computed: int
    closed: bool = False
    written: dict[int, int] = field(default_factory=dict)  # position -> block


def write(pool_data: torch.Tensor, block: int, offset: int, tokens: list[int], pos: int) -> None:
    """The KV of ``tokens[pos]`` (given its prefix) into the pool slot (block, offset)."""
    kv = kv_for(tokens[: pos + 1])
    for layer, (keys, values) in enumerate(kv):
        pool_data[layer, 0, :, block, offset] = keys[:, pos]
        pool_data[layer, 1, :, block, offset] = values[:, pos]


def holds(pool_data: torch.Tensor, blocks: list[int], tokens: list[int], size: int) -> bool:
    """Whether the first ``len(tokens)`` slots of ``blocks`` hold the KV of ``tokens``."""
    if not tokens:
        return True
    kv = kv_for(tokens)
    for pos in range(len(tokens)):
        block, offset = blocks[pos // size], pos % size
        for layer, (keys, values) in enumerate(kv):
            if not torch.equal(pool_data[layer, 0, :, block, offset], keys[:, pos]):
                return False
            if not torch.equal(pool_data[layer, 1, :, block, offset], values[:, pos]):
                return False
    return True


class TablesVsModel(RuleBasedStateMachine):
    block_size = 2
    capacity_blocks = 7

    def __init__(self) -> None:
        super().__init__()
        size = self.block_size
        self.cache = PrefixKVCache(LAYOUT, size, LAYOUT.block_bytes(size) * self.capacity_blocks)
        self.runs: list[Running] = []
        self.leases: list[tuple[Lease, list[int]]] = []
        self.seen: list[list[int]] = []  # token lists used so far, to derive related ones

    # --- helpers --------------------------------------------------------------------------

    def _related(self, data: st.DataObject, tail: list[int]) -> list[int]:
        near: bool = data.draw(st.booleans())
        if self.seen and near:
            base = data.draw(st.sampled_from(self.seen))
            tokens = base[: data.draw(st.integers(0, len(base)))] + tail
        else:
            tokens = tail
        self.seen.append(tokens)
        del self.seen[:-8]
        return tokens

    def _open_runs(self) -> list[Running]:
        return [r for r in self.runs if not r.closed]

    # --- tables ---------------------------------------------------------------------------

    @precondition(lambda self: len(self._open_runs()) < MAX_TABLES)
    @rule(data=st.data(), tail=tokens_st)
    def open(self, data: st.DataObject, tail: list[int]) -> None:
        tokens = self._related(data, tail)
        expected = self.cache.cached(tokens)
        table = self.cache.open(tokens)
        self.runs.append(Running(table, list(tokens), table.cached_tokens))
        size = self.block_size
        assert table.cached_tokens == expected
        assert table.cached_tokens % size == 0 and table.cached_tokens <= len(tokens)
        assert table.indexed * size == table.cached_tokens == len(table.blocks) * size
        assert not table.private
        # What the index served is exactly the KV of those tokens.
        assert holds(self.cache.pool.data, table.blocks, tokens[: table.cached_tokens], size)

    # Two sequences with one prompt running at once (each writes its own copy of the blocks
    # neither found cached; the later commit keeps its copies private).
    @precondition(lambda self: 0 < len(self._open_runs()) < MAX_TABLES)
    @rule(data=st.data())
    def open_twin(self, data: st.DataObject) -> None:
        run = data.draw(st.sampled_from(self._open_runs()))
        self.seen.append(list(run.tokens))
        table = self.cache.open(run.tokens)
        self.runs.append(Running(table, list(run.tokens), table.cached_tokens))
        cached = run.tokens[: table.cached_tokens]
        assert holds(self.cache.pool.data, table.blocks, cached, self.block_size)

    @precondition(lambda self: self._open_runs())
    @rule(data=st.data(), more=st.lists(st.integers(0, 2), max_size=4))
    def feed(self, data: st.DataObject, more: list[int]) -> None:
        """Grow for the next chunk; if it fits, write its KV (only ever into private
        blocks); if not, nothing changed."""
        run = data.draw(st.sampled_from(self._open_runs()))
        run.tokens += more
        pending = len(run.tokens) - run.computed
        if pending == 0:
            return
        count = data.draw(st.integers(1, pending))
        table, size, pool = run.table, self.block_size, self.cache.pool
        need = -(-(run.computed + count) // size) - len(table.blocks)
        available = self.cache.available_blocks()
        before = (list(table.blocks), set(table.private), pool.num_free, len(self.cache.index))
        evicted_before = self.cache.stats().evicted_blocks
        grown = self.cache.grow(table, run.computed + count)
        assert grown == (need <= available)
        if not grown:
            # All or nothing, and nothing evicted for a grow that could not succeed.
            after = (list(table.blocks), set(table.private), pool.num_free, len(self.cache.index))
            assert after == before
            assert self.cache.stats().evicted_blocks == evicted_before
            return
        assert table.capacity(size) >= run.computed + count
        assert table.blocks[: len(before[0])] == before[0]
        assert set(table.blocks[len(before[0]) :]) <= table.private
        for pos in range(run.computed, run.computed + count):
            block = table.blocks[pos // size]
            assert block in table.private, "a fed token's slot is in an indexed block"
            write(pool.data, block, pos % size, run.tokens, pos)
            run.written[pos] = block
        run.computed += count

    @precondition(lambda self: self._open_runs())
    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        run = data.draw(st.sampled_from(self._open_runs()))
        table, size = run.table, self.block_size
        fed = run.tokens[: run.computed]
        full = min(len(fed) // size, len(table.blocks))
        old = table.indexed
        already = self.cache.index.peek(fed[: full * size]).num_blocks
        assert already >= old  # the table's indexed prefix is pinned
        adopted = self.cache.commit(table, TokenBytes(as_token_bytes(fed)))
        if full <= old:
            assert adopted == 0 and table.indexed == old
            return
        assert adopted == full - already
        assert table.indexed == full
        # Every committed prefix is now served with the KV of its tokens.
        with self.cache.lookup(fed) as lease:
            assert lease.num_tokens >= full * size
            for layer, (keys, values) in enumerate(lease.kv):
                expected = kv_for(fed)[layer]
                assert torch.equal(keys, expected[0][:, : lease.num_tokens])
                assert torch.equal(values, expected[1][:, : lease.num_tokens])

    @precondition(lambda self: self._open_runs())
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        run = data.draw(st.sampled_from(self._open_runs()))
        private = len(run.table.private)
        free = self.cache.pool.num_free
        self.cache.close(run.table)
        assert self.cache.pool.num_free == free + private
        self.cache.close(run.table)  # idempotent
        assert self.cache.pool.num_free == free + private
        assert run.table.pin is None and not run.table.blocks and not run.table.private
        run.closed = True
        self.runs = self._open_runs()

    # --- the cache's own operations, interleaved -----------------------------------------

    @rule(data=st.data(), tail=tokens_st)
    def store(self, data: st.DataObject, tail: list[int]) -> None:
        tokens = self._related(data, tail)
        self.cache.store(tokens, kv_for(tokens))

    @precondition(lambda self: len(self.leases) < 3)
    @rule(data=st.data(), tail=tokens_st)
    def lookup(self, data: st.DataObject, tail: list[int]) -> None:
        tokens = self._related(data, tail)
        lease = self.cache.lookup(tokens)
        for layer, (keys, values) in enumerate(lease.kv):
            expected = kv_for(tokens)[layer]
            assert torch.equal(keys, expected[0][:, : lease.num_tokens])
            assert torch.equal(values, expected[1][:, : lease.num_tokens])
        self.leases.append((lease, tokens))

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        lease, _ = self.leases.pop(data.draw(st.integers(0, len(self.leases) - 1)))
        lease.release()

    @rule()
    def reset(self) -> None:
        self.cache.reset()

    # --- after every step -----------------------------------------------------------------

    @invariant()
    def consistent(self) -> None:
        cache, size = self.cache, self.block_size
        cache.check_invariants()
        indexed = set(cache.index.indexed_values())
        privates: set[int] = set()
        pinned: set[int] = set()
        for run in self._open_runs():
            table = run.table
            assert table.private <= set(table.blocks)
            assert set(table.blocks[table.indexed :]) <= table.private
            assert not table.private & indexed, "a private block is indexed"
            assert not table.private & privates, "a block is private to two tables"
            privates |= table.private
            # blocks[:indexed]: what the index maps for those tokens, or private copies.
            prefix = run.tokens[: table.indexed * size]
            path = cache.index.peek(prefix)
            assert path.num_blocks == table.indexed, "an open table's indexed prefix is gone"
            for mine, theirs in zip(table.blocks, path.values, strict=False):
                assert mine == theirs or mine in table.private
            pinned.update(path.values)
            assert isinstance(table.pin, Match) and table.pin.num_blocks == table.indexed
            # The KV the table holds is still that of its tokens.
            assert holds(cache.pool.data, table.blocks, run.tokens[: run.computed], size)
        for lease, tokens in self.leases:
            pinned.update(cache.index.peek(tokens[: lease.num_tokens]).values)
        stats = cache.stats()
        assert stats.pinned_blocks == len(pinned)
        assert stats.free_blocks + stats.used_blocks + len(privates) == stats.total_blocks
        assert stats.reserved_blocks == len(privates)
        assert cache.available_blocks() == stats.free_blocks + stats.used_blocks - len(pinned)

    def teardown(self) -> None:
        for run in self._open_runs():
            self.cache.close(run.table)
        for lease, _ in self.leases:
            lease.release()
        stats = self.cache.stats()
        assert stats.pinned_blocks == stats.reserved_blocks == 0
        assert stats.free_blocks + stats.used_blocks == stats.total_blocks
        self.cache.check_invariants()


class TablesVsModelBlock3(TablesVsModel):
    block_size = 3
    capacity_blocks = 5


class TablesVsModelBlock4(TablesVsModel):
    block_size = 4
    capacity_blocks = 4


settings_ = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestTablesBlock2 = TablesVsModel.TestCase
TestTablesBlock2.settings = settings_
TestTablesBlock3 = TablesVsModelBlock3.TestCase
TestTablesBlock3.settings = settings_
TestTablesBlock4 = TablesVsModelBlock4.TestCase
TestTablesBlock4.settings = settings_


class NullTables(RuleBasedStateMachine):
    """NullCache with a pool: private blocks only, nothing indexed, all back on close."""

    block_size = 3
    capacity_blocks = 6

    def __init__(self) -> None:
        super().__init__()
        size = self.block_size
        self.cache = NullCache(
            LAYOUT, size, capacity_bytes=LAYOUT.block_bytes(size) * self.capacity_blocks
        )
        self.tables: list[BlockTable] = []

    @precondition(lambda self: len(self.tables) < MAX_TABLES)
    @rule(tokens=tokens_st)
    def open(self, tokens: list[int]) -> None:
        table = self.cache.open(tokens)
        assert (table.blocks, table.cached_tokens, table.indexed, table.pin) == ([], 0, 0, None)
        assert self.cache.cached(tokens) == 0
        self.tables.append(table)

    @precondition(lambda self: self.tables)
    @rule(data=st.data(), tokens=st.integers(0, 20))
    def grow(self, data: st.DataObject, tokens: int) -> None:
        table = data.draw(st.sampled_from(self.tables))
        pool = self.cache.pool
        assert pool is not None
        need = -(-tokens // self.block_size) - len(table.blocks)
        free, blocks = pool.num_free, list(table.blocks)
        assert self.cache.available_blocks() == free
        grown = self.cache.grow(table, tokens)
        assert grown == (need <= free)
        if grown:
            assert table.capacity(self.block_size) >= tokens
            assert pool.num_free == free - max(need, 0)
        else:
            assert (table.blocks, pool.num_free) == (blocks, free)

    @precondition(lambda self: self.tables)
    @rule(data=st.data())
    def commit(self, data: st.DataObject) -> None:
        table = data.draw(st.sampled_from(self.tables))
        fed = list(range(table.capacity(self.block_size)))
        assert self.cache.commit(table, TokenBytes(as_token_bytes(fed))) == 0
        assert table.indexed == 0 and self.cache.cached(fed) == 0

    @precondition(lambda self: self.tables)
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        table = self.tables.pop(data.draw(st.integers(0, len(self.tables) - 1)))
        pool = self.cache.pool
        assert pool is not None
        free, held = pool.num_free, len(table.blocks)
        self.cache.close(table)
        self.cache.close(table)
        assert pool.num_free == free + held

    @invariant()
    def consistent(self) -> None:
        pool = self.cache.pool
        assert pool is not None
        seen: set[int] = set()
        for table in self.tables:
            assert set(table.blocks) == table.private
            assert not seen & table.private
            seen |= table.private
        pool.check(seen)
        stats = self.cache.stats()
        assert stats.used_blocks == stats.pinned_blocks == 0
        assert stats.free_blocks + len(seen) == stats.total_blocks == self.capacity_blocks

    def teardown(self) -> None:
        for table in self.tables:
            self.cache.close(table)
        assert self.cache.stats().free_blocks == self.capacity_blocks


TestNullTables = NullTables.TestCase
TestNullTables.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)


def test_grow_short_of_blocks_evicts_nothing() -> None:
    size = 2
    cache = PrefixKVCache(LAYOUT, size, LAYOUT.block_bytes(size) * 4)
    cache.store([1, 2, 3, 4], kv_for([1, 2, 3, 4]))  # 2 evictable blocks
    table = cache.open([7, 7])
    assert not cache.grow(table, 11)  # 6 blocks: 2 free + 2 evictable is short
    assert cache.cached([1, 2, 3, 4]) == 4 and table.blocks == [] and cache.pool.num_free == 2
    assert cache.grow(table, 8)  # 4 blocks: evicts the 2 cached ones
    assert cache.cached([1, 2, 3, 4]) == 0 and cache.pool.num_free == 0
    cache.close(table)
    assert cache.stats().free_blocks == 4
    cache.check_invariants()


def test_commit_of_tokens_another_table_indexed_first_keeps_a_private_copy() -> None:
    size = 2
    cache = PrefixKVCache(LAYOUT, size, LAYOUT.block_bytes(size) * 8)
    tokens = [1, 2, 3, 4, 5]
    first, second = cache.open(tokens), cache.open(tokens)
    for table in (first, second):
        assert cache.grow(table, 5)
        for pos in range(5):
            write(cache.pool.data, table.blocks[pos // size], pos % size, tokens, pos)
    assert cache.commit(first, TokenBytes(as_token_bytes(tokens))) == 2
    assert cache.commit(second, TokenBytes(as_token_bytes(tokens))) == 0
    assert second.indexed == 2 and set(second.blocks) == second.private  # copies stay private
    assert cache.stats().pinned_blocks == 2
    cache.close(first)
    assert cache.stats().pinned_blocks == 2  # still pinned through the second table
    cache.close(second)
    stats = cache.stats()
    assert (stats.pinned_blocks, stats.used_blocks, stats.free_blocks) == (0, 2, 6)
    cache.check_invariants()


def test_grow_evicts_another_tenants_blocks_whatever_its_share() -> None:
    size = 2
    cache = PrefixKVCache(LAYOUT, size, LAYOUT.block_bytes(size) * 4, tenant_share=0.5)
    owner = Namespace("b")
    cache.store([1, 2, 3, 4], kv_for([1, 2, 3, 4]), owner)  # 2 blocks: b's share, protected
    assert cache.store([5, 6, 7, 8, 9, 10], kv_for([5, 6, 7, 8, 9, 10]), "a") == 2  # 1 dropped
    cache.reset_tenant(None)
    table = cache.open([7, 7], "a")
    assert cache.available_blocks() == 4
    assert cache.grow(table, 8)  # the running sequence's KV beats b's cached blocks
    assert cache.cached([1, 2, 3, 4], owner) == 0
    cache.close(table)
    cache.check_invariants()


def test_reserve_takes_room_as_a_store_does_within_the_tenants_share() -> None:
    """What the serial runner caches at a request's end: the leading blocks that fit without
    evicting another tenant's protected ones, the rest dropped; then committed like a store."""
    size = 2
    cache = PrefixKVCache(LAYOUT, size, LAYOUT.block_bytes(size) * 4, tenant_share=0.5)
    owner = Namespace("b")
    cache.store([1, 2, 3, 4], kv_for([1, 2, 3, 4]), owner)  # 2 blocks: b's share, protected
    tokens = [5, 6, 7, 8, 9, 10]
    table = cache.open(tokens, "a")
    assert cache.reserve(table, 6) == 2  # 2 free blocks; b's stay, 1 block dropped
    assert cache.reserve(table, 4) == 2  # already holds room for 4 tokens: takes nothing
    for pos in range(4):
        write(cache.pool.data, table.blocks[pos // size], pos % size, tokens, pos)
    assert cache.commit(table, TokenBytes(as_token_bytes(tokens))) == 2
    cache.close(table)
    assert cache.cached([1, 2, 3, 4], owner) == 4 and cache.cached(tokens, "a") == 4
    assert cache.stats().dropped_blocks == 1
    cache.check_invariants()

"""BlockEvents: an observer told of every block the cache indexes and drops knows exactly
what the indexes hold, and where each block sits, after any interleaving of stores, running
sequences (several open on one prompt at once, committing in parts, so some of their
blocks are refused as another's copies), evictions and resets."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from prefixkv.cache.events import RemovalCause
from prefixkv.cache.paged import PrefixKVCache
from prefixkv.cache.table import BlockTable
from prefixkv.cache.tenants import Namespace, tenant_of
from prefixkv.tokens import TOKEN_BYTES, TokenBytes, as_token_bytes
from tests.tiers.kv import BLOCK, hot_cache, kv_of

PROMPTS = [[1] * 12, [1] * 8 + [2] * 8, [3] * 16, [1] * 4 + [5] * 4]
NAMESPACES: list[Hashable] = [None, Namespace("t")]


class Recorder:
    """Keeps what it is told: pool block -> (namespace, the token prefix ending with it)."""

    def __init__(self) -> None:
        self.held: dict[int, tuple[Hashable, TokenBytes]] = {}
        self.causes: set[RemovalCause] = set()

    def stored(
        self, namespace: Hashable, tokens: TokenBytes, first_block: int, blocks: Sequence[int]
    ) -> None:
        for i, block in enumerate(blocks):
            assert block not in self.held, "stored twice without a removal"
            end = (first_block + i + 1) * BLOCK * TOKEN_BYTES
            assert len(tokens) >= end
            self.held[block] = (namespace, TokenBytes(tokens[:end]))

    def removed(self, blocks: Sequence[int], cause: RemovalCause) -> None:
        self.causes.add(cause)
        for block in blocks:
            assert self.held.pop(block, None) is not None, "removed a block never stored"


class Observed(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.cache: PrefixKVCache = hot_cache(7)
        self.recorder = Recorder()
        self.cache.events = self.recorder
        self.tables: list[tuple[BlockTable, list[int]]] = []

    @rule(p=st.sampled_from(PROMPTS), ns=st.sampled_from(NAMESPACES))
    def store(self, p: list[int], ns: Hashable) -> None:
        self.cache.store(p, kv_of(p), ns)

    @rule(p=st.sampled_from(PROMPTS), ns=st.sampled_from(NAMESPACES))
    def open(self, p: list[int], ns: Hashable) -> None:
        if len(self.tables) < 3:
            self.tables.append((self.cache.open(p, ns), p))

    @rule(i=st.integers(0, 2), blocks=st.integers(1, 4))
    def grow_and_commit(self, i: int, blocks: int) -> None:
        if i < len(self.tables):
            table, tokens = self.tables[i]
            upto = tokens[: min(len(tokens), (table.indexed + blocks) * BLOCK)]
            if self.cache.grow(table, len(upto)):
                self.cache.commit(table, as_token_bytes(upto))

    @rule(i=st.integers(0, 2))
    def close(self, i: int) -> None:
        if i < len(self.tables):
            self.cache.close(self.tables.pop(i)[0])

    @rule()
    def reset(self) -> None:
        self.cache.reset()

    @rule(tenant=st.sampled_from(["t", None]))
    def reset_tenant(self, tenant: Hashable) -> None:
        self.cache.reset_tenant(tenant)

    @invariant()
    def the_observer_knows_every_indexed_block_and_its_place(self) -> None:
        indexed = [v for _, index in self.cache.tenants for v in index.indexed_values()]
        assert sorted(self.recorder.held) == sorted(indexed)
        for block, (namespace, prefix) in self.recorder.held.items():
            index = self.cache.tenants.index(tenant_of(namespace))
            assert index.peek(prefix, namespace).values[-1] == block

    def teardown(self) -> None:
        for table, _ in self.tables:
            self.cache.close(table)
        self.cache.check_invariants()


TestObserved = Observed.TestCase
TestObserved.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)

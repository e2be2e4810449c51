"""Differential tests: PrefixKVCache against a simple reference, plus a KV content oracle."""

from __future__ import annotations

import itertools

import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from prefixkv import LFUPolicy, LRUPolicy, PrefixKVCache
from prefixkv.index.reference import ReferenceIndex

from ..kvfixtures import LAYOUT, kv_for
from .reachable import storage_bytes_held

BLOCK = 2
CAPACITY_BLOCKS = 7
BLOCK_BYTES = LAYOUT.block_bytes(BLOCK)
tokens_st = st.lists(st.integers(0, 2), max_size=16)
namespaces_st = st.sampled_from([None, "tenant-b"])


class ReferenceCache:
    """Capacity in blocks, a ReferenceIndex for order, nothing else."""

    def __init__(self, policy: object) -> None:
        self.ref = ReferenceIndex(BLOCK, policy=policy)  # type: ignore[arg-type]
        self.serials = itertools.count()
        self.dropped = self.stored = self.evicted = 0

    def lookup(self, tokens: list[int], ns: str | None) -> object:
        match = self.ref.match(tokens, ns)
        self.ref.pin(match)
        return match

    def store(self, tokens: list[int], ns: str | None) -> int:
        cached = self.ref.peek(tokens, ns)
        self.ref.pin(cached)
        need = len(tokens) // BLOCK - len(cached.values)
        shortfall = need - (CAPACITY_BLOCKS - len(self.ref))
        if need > 0 and shortfall > 0:
            self.evicted += len(self.ref.evict(shortfall))
        fits = max(0, min(need, CAPACITY_BLOCKS - len(self.ref)))
        self.dropped += max(0, need - fits)
        self.ref.insert(tokens, list(cached.values) + [next(self.serials) for _ in range(fits)], ns)
        self.ref.unpin(cached)
        self.stored += fits
        return fits


class CacheVsReference(RuleBasedStateMachine):
    policy_cls: type = LRUPolicy

    def __init__(self) -> None:
        super().__init__()
        capacity = LAYOUT.block_bytes(BLOCK) * CAPACITY_BLOCKS
        self.cache = PrefixKVCache(LAYOUT, BLOCK, capacity, policy=self.policy_cls())
        self.ref = ReferenceCache(self.policy_cls())
        self.leases: list[tuple[object, object, list[int], str | None]] = []
        self.stored: list[tuple[list[int], str | None]] = []  # tokens, namespace

    @rule(tokens=tokens_st, ns=namespaces_st)
    def store(self, tokens: list[int], ns: str | None) -> None:
        assert self.cache.store(tokens, kv_for(tokens), ns) == self.ref.store(tokens, ns)
        self.stored.append((tokens, ns))
        del self.stored[:-6]

    @precondition(lambda self: len(self.leases) < 5)
    @rule(tokens=tokens_st, ns=namespaces_st)
    def lookup(self, tokens: list[int], ns: str | None) -> None:
        lease = self.cache.lookup(tokens, ns)
        match = self.ref.lookup(tokens, ns)
        assert lease.num_tokens == match.num_tokens  # type: ignore[attr-defined]
        expected = kv_for(tokens)
        for layer, (keys, values) in enumerate(lease.kv):
            assert torch.equal(keys, expected[layer][0][:, : lease.num_tokens])
            assert torch.equal(values, expected[layer][1][:, : lease.num_tokens])
        self.leases.append((lease, match, tokens, ns))

    # Independent random token lists rarely share a prefix, so lookups would mostly miss and
    # stores would never split a node. These two rules derive a lookup from an earlier store
    # and a store from a held lease: hits, partial hits, splits under pins.

    @precondition(lambda self: self.stored and len(self.leases) < 5)
    @rule(data=st.data(), tail=tokens_st)
    def lookup_near_a_store(self, data: st.DataObject, tail: list[int]) -> None:
        tokens, ns = data.draw(st.sampled_from(self.stored))
        self.lookup(tokens[: data.draw(st.integers(0, len(tokens)))] + tail, ns)

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), tail=tokens_st)
    def store_near_a_lease(self, data: st.DataObject, tail: list[int]) -> None:
        _, _, tokens, ns = data.draw(st.sampled_from(self.leases))
        self.store(tokens[: data.draw(st.integers(0, len(tokens)))] + tail, ns)

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        lease, match, _, _ = self.leases.pop(data.draw(st.integers(0, len(self.leases) - 1)))
        lease.release()  # type: ignore[attr-defined]
        lease.release()  # type: ignore[attr-defined]  # idempotent
        self.ref.ref.unpin(match)  # type: ignore[arg-type]

    @rule()
    def reset(self) -> None:
        evicted = self.ref.ref.evict(len(self.ref.ref))
        self.ref.evicted += len(evicted)
        assert self.cache.reset() == len(evicted)

    @invariant()
    def consistent(self) -> None:
        self.cache.check_invariants()
        stats = self.cache.stats()
        assert stats.used_blocks == len(self.ref.ref)
        assert stats.pinned_blocks == self.ref.ref.pinned_blocks
        assert stats.free_blocks == CAPACITY_BLOCKS - stats.used_blocks
        assert stats.dropped_blocks == self.ref.dropped
        assert stats.inserted_blocks == self.ref.stored
        assert stats.evicted_blocks == self.ref.evicted
        assert stats.used_bytes == len(self.ref.ref) * BLOCK_BYTES  # the reference's count

    def teardown(self) -> None:
        # What the cache really holds: its pool, not a byte more (leases still held or not).
        assert storage_bytes_held(self.cache) == CAPACITY_BLOCKS * BLOCK_BYTES


class LFUCacheVsReference(CacheVsReference):
    policy_cls = LFUPolicy


settings_ = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestLRUCacheAgainstReference = CacheVsReference.TestCase
TestLRUCacheAgainstReference.settings = settings_
TestLFUCacheAgainstReference = LFUCacheVsReference.TestCase
TestLFUCacheAgainstReference.settings = settings_

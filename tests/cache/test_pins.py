"""Pinned prefixes (``PrefixKVCache.pin_prefix``): resident until their TTL or an unpin,
skipped by eviction, counted in ``pinned_blocks``, held within the tenant's share and the
pinnable half of the pool; a state machine against a plain model of what must stay."""

from __future__ import annotations

from collections.abc import Hashable

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from prefixkv import PrefixKVCache
from prefixkv.cache import Namespace
from prefixkv.cache.pins import PinRefused

from ..kvfixtures import LAYOUT, kv_for

BLOCK = 4


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def cache(blocks: int, clock: Clock, share: float | None = None) -> PrefixKVCache:
    return PrefixKVCache(
        LAYOUT, BLOCK, LAYOUT.block_bytes(BLOCK) * blocks, tenant_share=share, clock=clock
    )


def prompt(tag: int, blocks: int) -> list[int]:
    return [tag, *range(1, BLOCK * blocks)]


def cached(c: PrefixKVCache, tokens: list[int], namespace: Hashable) -> int:
    return c.cached(tokens, namespace)


def test_a_pin_survives_pressure_until_its_ttl() -> None:
    clock = Clock()
    c = cache(16, clock)
    mine, ns = prompt(0, 4), Namespace("a")
    c.store(mine, kv_for(mine), ns)
    pin = c.pin_prefix(mine, ns, ttl_seconds=30)
    assert (pin.tokens, pin.blocks, pin.tenant) == (16, 4, "a")
    assert c.stats().pinned_blocks == c.tenant_stats("a").pinned_blocks == 4
    for tag in range(1, 20):  # 76 blocks of traffic through a 16-block pool
        other = prompt(tag, 4)
        c.store(other, kv_for(other), Namespace("b"))
        assert cached(c, mine, ns) == 16
        c.check_invariants()
    clock.now += 30  # the deadline passes: the next look for room expires the pin
    assert c.stats().pinned_blocks == 0
    for tag in range(20, 24):
        other = prompt(tag, 4)
        c.store(other, kv_for(other), Namespace("b"))
    assert cached(c, mine, ns) == 0


def test_unpin_is_the_owners_only() -> None:
    clock = Clock()
    c = cache(16, clock)
    mine = prompt(0, 2)
    c.store(mine, kv_for(mine), Namespace("a"))
    pin = c.pin_prefix(mine, Namespace("a"), 60)
    assert c.unpin_prefix(pin.id, "b") is None  # another tenant: as if there were none
    assert c.stats().pinned_blocks == 2
    assert c.unpin_prefix(pin.id, "a") == pin
    assert c.unpin_prefix(pin.id, "a") is None
    assert c.stats().pinned_blocks == 0
    c.check_invariants()


def test_pins_stay_within_the_share_and_the_pinnable_half() -> None:
    clock = Clock()
    c = cache(40, clock, share=0.25)  # 10 blocks a tenant; 20 pinnable in all
    first, second = prompt(1, 8), prompt(2, 3)
    for tokens in (first, second):
        c.store(tokens, kv_for(tokens), Namespace("a"))
    c.pin_prefix(first, Namespace("a"), 60)
    with pytest.raises(PinRefused, match=r"11 pinned blocks, over its share .* \(10 blocks\)") as e:
        c.pin_prefix(second, Namespace("a"), 60)
    assert e.value.code == "pin_over_share"
    assert c.tenant_stats("a").pinned_blocks == 8
    # Other tenants pin within their own shares until all pins reach half the pool.
    for tenant in ("b", "c"):
        tokens = prompt(3, 8)
        c.store(tokens, kv_for(tokens), Namespace(tenant))
        if tenant == "b":
            c.pin_prefix(tokens, Namespace(tenant), 60)
        else:
            with pytest.raises(PinRefused, match="all pins at 24 blocks") as e:
                c.pin_prefix(tokens, Namespace(tenant), 60)
            assert e.value.code == "pin_limit"
    assert c.stats().pinned_blocks == 16
    with pytest.raises(PinRefused, match="no full block cached"):
        c.pin_prefix(prompt(9, 2), Namespace("d"), 60)


class PinMachine(RuleBasedStateMachine):
    """Random stores, pins, unpins and clock steps on a 24-block pool shared by two tenants;
    the model: which prompts have a live pin (and until when). Limits count each pin's
    blocks, even where two pins share some (conservative)."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.cache = cache(24, self.clock, share=0.4)
        self.live: dict[str, tuple[list[int], Namespace, float, int]] = {}

    def _expire(self) -> None:
        self.live = {k: v for k, v in self.live.items() if v[2] > self.clock.now}

    @rule(tag=st.integers(0, 12), blocks=st.integers(1, 6), tenant=st.sampled_from("ab"))
    def store(self, tag: int, blocks: int, tenant: str) -> None:
        tokens = prompt(tag, blocks)
        self.cache.store(tokens, kv_for(tokens), Namespace(tenant))

    @rule(tag=st.integers(0, 12), blocks=st.integers(1, 6), tenant=st.sampled_from("ab"),
          ttl=st.integers(1, 20))  # fmt: skip
    def pin(self, tag: int, blocks: int, tenant: str, ttl: int) -> None:
        tokens, ns = prompt(tag, blocks), Namespace(tenant)
        self._expire()
        want = self.cache.cached(tokens, ns) // BLOCK
        mine = sum(v[3] for v in self.live.values() if v[1] == ns)
        total = sum(v[3] for v in self.live.values())
        allowed = want > 0 and mine + want <= 9 and total + want <= 12  # quota 9, pinnable 12
        try:
            pin = self.cache.pin_prefix(tokens, ns, ttl)
        except PinRefused:
            assert not allowed
            return
        assert allowed and pin.blocks == want
        self.live[pin.id] = (tokens, ns, self.clock.now + ttl, want)

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def unpin(self, data: st.DataObject) -> None:
        pin_id = data.draw(st.sampled_from(sorted(self.live)))
        _, ns, expires, _ = self.live.pop(pin_id)
        found = self.cache.unpin_prefix(pin_id, ns.tenant)
        assert (found is not None) == (expires > self.clock.now)

    @rule(seconds=st.integers(1, 8))
    def wait(self, seconds: int) -> None:
        self.clock.now += seconds

    @invariant()
    def pinned_prefixes_stay(self) -> None:
        self._expire()
        for tokens, ns, _, blocks in self.live.values():
            assert self.cache.cached(tokens, ns) >= blocks * BLOCK
        stats = self.cache.stats()  # expires what is due, as every look for room does
        distinct = {
            (ns, tuple(tokens[: k * BLOCK]))
            for tokens, ns, _, blocks in self.live.values()
            for k in range(1, blocks + 1)
        }
        assert stats.pinned_blocks == len(distinct)  # blocks, each once however many pins
        self.cache.check_invariants()


TestPins = PinMachine.TestCase
TestPins.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)

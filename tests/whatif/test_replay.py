"""The replay against a block-by-block model of the same rules, and against what an
unbounded cache must find."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv.whatif.records import LoggedRequest
from prefixkv.whatif.replay import CacheConfig, Replay

from .workloads import requests

BLOCK_BYTES = 1000


class ModelReplay:
    """The replay's rules spelled out on a dict: one entry per cached name with its
    (hits, tick); a name is evictable when no cached name extends it and the running
    request did not match it; the smallest priority goes first."""

    def __init__(self, capacity: int, policy: str) -> None:
        self.capacity = capacity
        self.lfu = policy == "lfu"
        self.cache: dict[bytes, list[int]] = {}
        self.parent: dict[bytes, bytes | None] = {}
        self.tick = 0

    def _use(self, names: tuple[bytes, ...]) -> None:
        self.tick += 1
        for i, name in enumerate(names):
            if name in self.cache:
                self.cache[name] = [self.cache[name][0] + self.lfu, self.tick]
            else:
                self.cache[name] = [1, self.tick]
                self.parent[name] = names[i - 1] if i else None

    def feed(self, r: LoggedRequest) -> int:
        names = r.blocks + r.output_blocks
        hit = 0
        while hit < min(r.lookup_blocks, len(r.blocks)) and names[hit] in self.cache:
            hit += 1
        self._use(names[:hit])
        for _ in range(len(self.cache) + r.held_blocks - hit - self.capacity):
            self._evict_one(set(names[:hit]))
        stored = min(len(names), hit + max(0, self.capacity - len(self.cache)))
        first = min(len(r.blocks), stored)
        for end in [first, *range(first + 1, stored + 1)]:
            if end:
                self._use(names[:end])
        return hit

    def _evict_one(self, pinned: set[bytes]) -> None:
        parents = {self.parent[n] for n in self.cache}
        leaves = [n for n in self.cache if n not in parents and n not in pinned]
        if leaves:
            del self.cache[min(leaves, key=self._priority)]

    def _priority(self, name: bytes) -> tuple[int, ...]:
        hits, tick = self.cache[name]
        return (hits, tick) if self.lfu else (tick,)


@given(
    st.lists(requests(), max_size=30),
    st.integers(1, 24),
    st.sampled_from(["lru", "lfu"]),
)
@settings(max_examples=300, deadline=None)
def test_replay_matches_the_model(logged: list[LoggedRequest], capacity: int, policy: str) -> None:
    replay = Replay(CacheConfig(capacity * BLOCK_BYTES, policy), BLOCK_BYTES)
    model = ModelReplay(capacity, policy)
    for r in logged:
        ram, disk = replay.feed(r)
        assert (ram, disk) == (model.feed(r), 0)
        replay.check_invariants()
        assert set(replay.index.indexed_values()).__len__() == len(model.cache)
    result = replay.result()
    assert result.requests == len(logged)
    assert result.prompt_tokens == sum(r.prompt_tokens for r in logged)
    assert 0.0 <= result.hit_rate < 1.0 or not logged


def seen_hits(logged: list[LoggedRequest]) -> list[int]:
    """What a cache that never evicts finds: the leading lookup names stored before."""
    stored: set[bytes] = set()
    found = []
    for r in logged:
        names = r.blocks + r.output_blocks
        hit = 0
        while hit < min(r.lookup_blocks, len(r.blocks)) and names[hit] in stored:
            hit += 1
        found.append(hit)
        stored.update(names)
    return found


@given(st.lists(requests(), max_size=30), st.sampled_from(["lru", "lfu"]))
@settings(max_examples=200, deadline=None)
def test_an_unbounded_cache_finds_everything_seen(logged: list[LoggedRequest], policy: str) -> None:
    replay = Replay(CacheConfig(10_000 * BLOCK_BYTES, policy), BLOCK_BYTES)
    assert [replay.feed(r)[0] for r in logged] == seen_hits(logged)
    assert replay.result().evicted_blocks == 0


@given(st.lists(requests(), max_size=30), st.integers(8, 12))
@settings(max_examples=200, deadline=None)
def test_a_big_disk_brings_back_what_ram_evicted(logged: list[LoggedRequest], ram: int) -> None:
    """Write-through to a disk that never evicts: RAM and disk together find what an
    unbounded cache finds, however small RAM is, as long as each request fits in RAM (a
    block RAM never held is never written below: requests here hold at most 8)."""
    replay = Replay(CacheConfig(ram * BLOCK_BYTES, "lru", 10_000 * BLOCK_BYTES), BLOCK_BYTES)
    found = [replay.feed(r) for r in logged]
    assert [ram_hits + disk for ram_hits, disk in found] == seen_hits(logged)
    result = replay.result()
    assert result.hit_tokens == sum(map(sum, found)) * 4


def test_a_disk_of_one_block_keeps_only_the_latest() -> None:
    from .workloads import BLOCK, chain

    names = chain([1, 1, 1])
    r = LoggedRequest(names, (), 3 * BLOCK + 1, 0, 0, None, BLOCK, BLOCK_BYTES)
    replay = Replay(CacheConfig(BLOCK_BYTES * 4, "lru", BLOCK_BYTES), BLOCK_BYTES)
    replay.feed(r)
    assert replay.disk is not None and len(replay.disk) == 1
    replay.check_invariants()

"""One cache configuration replayed over a request log, through the real prefix index.

The log gives each request's blocks as chained 128-bit names (each name stands for its whole
prefix), so a request is replayed as a sequence of *name blocks*: one :class:`PrefixIndex`
block of four 32-bit "tokens" holding one name. Two requests share a prefix of names exactly
when the server saw them share a prefix of token blocks in one namespace (namespaces differ
from the first name on, so one tree holds them all), and the index compares the names as
bytes, evicts with its real policies and use records, as in the server.

Per request, as the batch runner does (``engine/batch/runner.py``, ``cache/paged.py``):

1. ``match`` the prompt's lookup blocks (all full blocks but the last token's), pin them;
2. with a disk tier, continue the match there block by block, as a promotion does;
3. evict what the request's held blocks need beyond the free ones (never its pinned prefix);
4. index its new blocks: the prompt's once, then each generated block as it filled (one
   ``insert`` each, as each commit is one: this is what LFU counts), as far as room allows;
   write them through to the disk tier, which evicts least recently used names.

Not modelled: concurrency (requests replay one at a time, in log order: the server's running
requests hold blocks together and may preempt), tenant shares (tenants compete freely, as a
server without ``--tenant-share``), tier deadlines and the disk tier's record headers (a
disk block counts ``block_bytes``).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from prefixkv.index.evicted import EvictionObserver
from prefixkv.index.policy import policy_by_name
from prefixkv.index.tree import PrefixIndex
from prefixkv.tokens import TOKEN_BYTES, TokenBytes
from prefixkv.whatif.records import NAME_BYTES, LoggedRequest

NAME_TOKENS = NAME_BYTES // TOKEN_BYTES
"""Index "tokens" per name block."""


@dataclass(frozen=True)
class CacheConfig:
    """A cache to try: RAM bytes, eviction policy, and optionally a disk tier below."""

    ram_bytes: int
    policy: str = "lru"
    disk_bytes: int | None = None


@dataclass(frozen=True)
class ReplayResult:
    """What a replay found, summed over its requests."""

    config: CacheConfig
    requests: int
    prompt_tokens: int
    ram_hit_tokens: int
    disk_hit_tokens: int
    evicted_blocks: int

    @property
    def hit_tokens(self) -> int:
        """Prompt tokens not prefilled: found in RAM or brought back from disk."""
        return self.ram_hit_tokens + self.disk_hit_tokens

    @property
    def hit_rate(self) -> float:
        """Hit tokens / prompt tokens (the denominator of the server's cached_tokens)."""
        return self.hit_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class DiskLRU:
    """A disk tier as the replay sees it: which names it holds, least recently used first
    out past ``capacity`` blocks."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._names: OrderedDict[bytes, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._names)

    def run(self, names: Sequence[bytes], start: int, stop: int) -> int:
        """How many of ``names[start:stop]`` it holds in a row from ``start`` (each one
        read counts as a use)."""
        found = 0
        for name in names[start:stop]:
            if name not in self._names:
                break
            self._names.move_to_end(name)
            found += 1
        return found

    def holds(self, names: Sequence[bytes], start: int) -> int:
        """How many of ``names`` it holds in a row from ``start``, without using them."""
        found = 0
        for name in names[start:]:
            if name not in self._names:
                break
            found += 1
        return found

    def put(self, names: Sequence[bytes]) -> None:
        for name in names:
            self._names[name] = None
            self._names.move_to_end(name)
        while len(self._names) > self.capacity:
            self._names.popitem(last=False)


class Replay:
    """Feeds requests to one configuration's cache; ``result()`` any time. ``on_evict`` is
    told of every run of name blocks the RAM index evicts (each 16-byte "block" one name)."""

    def __init__(
        self, config: CacheConfig, block_bytes: int, on_evict: EvictionObserver | None = None
    ) -> None:
        self.config = config
        self.capacity = config.ram_bytes // block_bytes
        if self.capacity < 1:
            raise ValueError(f"{config.ram_bytes} bytes hold no block of {block_bytes} bytes")
        self.index = PrefixIndex(
            NAME_TOKENS, policy=policy_by_name(config.policy), on_evict=on_evict
        )
        disk = None if config.disk_bytes is None else config.disk_bytes // block_bytes
        self.disk = None if disk is None else DiskLRU(disk)
        self._values = itertools.count()
        self._requests = self._prompt_tokens = self._ram = self._disk_hits = 0

    def feed(self, request: LoggedRequest) -> tuple[int, int]:
        """Replay one request; the blocks it found in RAM and on disk."""
        names = request.blocks + request.output_blocks
        lookup = min(request.lookup_blocks, len(request.blocks))
        match = self.index.match(name_tokens(names[:lookup]))
        ram = match.num_blocks
        disk = 0 if self.disk is None else self.disk.run(names, ram, lookup)
        self.index.pin(match)
        try:
            short = len(self.index) + request.held_blocks - ram - self.capacity
            if short > 0:
                self.index.evict(short)
            stored = min(len(names), ram + max(0, self.capacity - len(self.index)))
            self._commit(names[:stored], len(request.blocks))
        finally:
            self.index.unpin(match)
        if self.disk is not None:
            self.disk.put(names[ram + disk : stored])
        size = request.block_size
        self._requests += 1
        self._prompt_tokens += request.prompt_tokens
        self._ram += ram * size
        self._disk_hits += disk * size
        return ram, disk

    def _commit(self, names: Sequence[bytes], prompt_blocks: int) -> None:
        """Index ``names`` as the server's commits do: the prompt's blocks, then each later
        block on its own."""
        first = min(prompt_blocks, len(names))
        for end in [first, *range(first + 1, len(names) + 1)]:
            if end:
                values = [next(self._values) for _ in range(end)]
                self.index.insert(name_tokens(names[:end]), values)

    def result(self) -> ReplayResult:
        return ReplayResult(
            self.config,
            self._requests,
            self._prompt_tokens,
            self._ram,
            self._disk_hits,
            self.index.stats().evicted_blocks,
        )

    def check_invariants(self) -> None:
        """The index's own invariants; RAM and disk within their capacity."""
        self.index.check_invariants()
        if len(self.index) > self.capacity:
            raise AssertionError(f"{len(self.index)} blocks cached, capacity {self.capacity}")
        if self.disk is not None and len(self.disk) > self.disk.capacity:
            raise AssertionError("the disk tier holds more than its capacity")


def name_tokens(names: Sequence[bytes]) -> TokenBytes:
    """``names`` as the replay's index reads them: one block of four \"tokens\" per name."""
    return TokenBytes(b"".join(names))

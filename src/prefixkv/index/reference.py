"""A deliberately simple prefix index: one dict entry per block, every rule spelled out.

This is the executable specification of :class:`~prefixkv.index.tree.PrefixIndex`: the property
tests drive both with the same random operations and require identical answers, and the
index benchmark uses it as the plain-dict baseline. It favours obviousness over speed:
``evict`` scans every block for each block it removes (O(n) per block).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prefixkv.index.policy import BlockAccess, EvictionPolicy, LRUPolicy
from prefixkv.index.records import PinnedBlocksError, StaleMatchError
from prefixkv.tokens import TOKEN_BYTES, as_token_bytes

# An entry's key: (namespace, parent entry serial or None for the first block, block bytes).
Key = tuple[Hashable, int | None, bytes]


@dataclass(eq=False)
class _Entry:
    key: Key
    value: Any
    serial: int
    hits: int
    tick: int
    pins: int = 0
    children: int = 0


@dataclass(frozen=True, eq=False)
class RefMatch:
    num_tokens: int
    values: tuple[Any, ...]
    entries: tuple[_Entry, ...] = field(repr=False)


class ReferenceIndex:
    """Same contract as PrefixIndex (match/insert/pin/unpin/evict), same eviction order."""

    def __init__(self, block_size: int = 16, *, policy: EvictionPolicy | None = None) -> None:
        self.block_size = block_size
        self.policy = policy or LRUPolicy()
        self._entries: dict[Key, _Entry] = {}
        self._by_serial: dict[int, _Entry] = {}
        self._tick = 0
        self._serial = 0
        self._held: dict[RefMatch, int] = {}

    def _blocks(self, tokens: Any) -> list[bytes]:
        buf = as_token_bytes(tokens)
        bb = self.block_size * TOKEN_BYTES
        return [buf[i : i + bb] for i in range(0, len(buf) - bb + 1, bb)]

    def _walk(self, namespace: Hashable, blocks: list[bytes]) -> list[_Entry]:
        path: list[_Entry] = []
        parent: int | None = None
        for block in blocks:
            entry = self._entries.get((namespace, parent, block))
            if entry is None:
                break
            path.append(entry)
            parent = entry.serial
        return path

    def _use(self, entries: list[_Entry]) -> None:
        for entry in entries:
            entry.hits += self.policy.hit_step
            entry.tick = self._tick

    def match(self, tokens: Any, namespace: Hashable = None) -> RefMatch:
        self._tick += 1
        path = self._walk(namespace, self._blocks(tokens))
        self._use(path)
        return RefMatch(len(path) * self.block_size, tuple(e.value for e in path), tuple(path))

    def peek(self, tokens: Any, namespace: Hashable = None) -> RefMatch:
        path = self._walk(namespace, self._blocks(tokens))
        return RefMatch(len(path) * self.block_size, tuple(e.value for e in path), tuple(path))

    def insert(self, tokens: Any, values: Sequence[Any], namespace: Hashable = None) -> list[Any]:
        self._tick += 1
        blocks = self._blocks(tokens)[: len(values)]
        path = self._walk(namespace, blocks)
        self._use(path)
        rejected = list(values[: len(path)])
        parent = path[-1] if path else None
        for block, value in zip(blocks[len(path) :], values[len(path) : len(blocks)], strict=False):
            self._serial += 1
            key = (namespace, parent.serial if parent else None, block)
            entry = _Entry(key, value, self._serial, hits=1, tick=self._tick)
            self._entries[key] = entry
            self._by_serial[entry.serial] = entry
            if parent is not None:
                parent.children += 1
            parent = entry
        return rejected

    def pin(self, match: RefMatch) -> None:
        if any(self._entries.get(e.key) is not e for e in match.entries):
            raise StaleMatchError("blocks of this match were evicted since it was made")
        for entry in match.entries:
            entry.pins += 1
        self._held[match] = self._held.get(match, 0) + 1

    def unpin(self, match: RefMatch) -> None:
        if not self._held.get(match):
            raise ValueError("unpin() of a match that is not pinned")
        self._held[match] -= 1
        for entry in match.entries:
            entry.pins -= 1

    def evict(self, num_blocks: int) -> list[Any]:
        out: list[Any] = []
        while len(out) < num_blocks:
            leaves = [e for e in self._entries.values() if e.pins == 0 and e.children == 0]
            if not leaves:
                break
            victim = min(leaves, key=lambda e: self.policy.priority(BlockAccess(e.hits, e.tick)))
            del self._entries[victim.key]
            del self._by_serial[victim.serial]
            parent_serial = victim.key[1]
            if parent_serial is not None:
                self._by_serial[parent_serial].children -= 1
            out.append(victim.value)
        return out

    def discard(self, tokens: Any, first_block: int, namespace: Hashable = None) -> list[Any]:
        path = self._walk(namespace, self._blocks(tokens))
        if len(path) <= first_block:
            return []
        doomed = {path[first_block].serial}
        for entry in sorted(self._entries.values(), key=lambda e: e.serial):  # parents first
            if entry.key[1] in doomed:
                doomed.add(entry.serial)
        victims = [self._by_serial[serial] for serial in doomed]
        if any(e.pins for e in victims):
            raise PinnedBlocksError(f"block {first_block} of this prefix is pinned")
        for entry in victims:
            del self._entries[entry.key]
            del self._by_serial[entry.serial]
        if first_block:
            path[first_block - 1].children -= 1
        return [e.value for e in victims]

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def evictable_blocks(self) -> int:
        return sum(1 for e in self._entries.values() if e.pins == 0)

    @property
    def pinned_blocks(self) -> int:
        return sum(1 for e in self._entries.values() if e.pins > 0)

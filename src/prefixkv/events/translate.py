"""From what the cache and the tiers report to wire events (on the publisher's thread).

The cache reports pool block ids and tokens (:mod:`prefixkv.cache.events`), the tiers block
names (:class:`~prefixkv.tiers.protocol.TierEvents`); subscribers want names, parents and
token ids in every medium. The :class:`Translator` names RAM blocks with the tiers' namer
(so a block has one name in every medium), remembers which name each pool block holds
(a removal gives only the id), and keeps a bounded memory of the parent and tokens of the
records last described, from which a tier's ``stored`` (names only) is told in full.
Whoever writes records to a tier describes them first (the tier writer, a promotion copying
records up), on the thread that then writes them, so a description is there when a tier
stores its block unless it aged out of the memory (``undescribed``: then the event carries
no tokens and no parent). RAM's own stores are not remembered: every tier write is
described by its writer, and a memory of every RAM block would cost each one an entry.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable
from typing import NamedTuple

import numpy as np

from prefixkv.events.wire import (
    RAM,
    TIER_MEDIA,
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    Medium,
)
from prefixkv.tiers.naming import BlockNamer
from prefixkv.tokens import TOKEN_BYTES

Event = BlockStored | BlockRemoved | AllBlocksCleared


class RamStored(NamedTuple):
    namespace: Hashable
    tokens: bytes
    first: int
    blocks: tuple[int, ...]


class RamRemoved(NamedTuple):
    blocks: tuple[int, ...]


class Described(NamedTuple):
    """A chain of records about to be written (see TierEvents.described)."""

    names: tuple[bytes, ...]
    parent: bytes | None
    tokens: bytes


class TierStored(NamedTuple):
    tier: str
    names: tuple[bytes, ...]


class TierRemoved(NamedTuple):
    tier: str
    names: tuple[bytes, ...]


class Cleared(NamedTuple):
    """Everything is empty as far as this publisher knows (its start)."""


Report = RamStored | RamRemoved | Described | TierStored | TierRemoved | Cleared


class _Described(NamedTuple):
    parent: bytes | None
    tokens: bytes


class Translator:
    """Turns reports into events, in order. Not thread-safe: the publisher's thread only."""

    def __init__(self, namer: BlockNamer, remembered: int = 1 << 16) -> None:
        self.namer = namer
        self.remembered = remembered
        self.undescribed = 0
        """Tier blocks stored whose parent and tokens had aged out of memory."""
        self._names: dict[int, bytes] = {}  # pool block id -> name, for blocks in RAM
        self._described: OrderedDict[bytes, _Described] = OrderedDict()

    def events(self, reports: Iterable[Report]) -> list[Event]:
        out: list[Event] = []
        for report in reports:
            out += self._translate(report)
        return out

    def _translate(self, report: Report) -> list[Event]:
        if isinstance(report, RamStored):
            return self._ram_stored(report)
        if isinstance(report, RamRemoved):
            names = [self._names.pop(b) for b in report.blocks if b in self._names]
            return [_removed(names, RAM)] if names else []
        if isinstance(report, Described):
            self._describe(report.names, report.parent, report.tokens)
            return []
        if isinstance(report, TierStored):
            return self._tier_stored(report)
        if isinstance(report, TierRemoved):
            return [_removed(list(report.names), _tier(report.tier))]
        self._names.clear()
        return [AllBlocksCleared()]

    def _ram_stored(self, report: RamStored) -> list[Event]:
        first, count = report.first, len(report.blocks)
        if not count:
            return []
        names = self.namer.names(report.tokens, report.namespace, first + count)
        parent = names[first - 1] if first else None
        size = self.namer.block_size * TOKEN_BYTES
        self._names.update(zip(report.blocks, names[first:], strict=True))
        tokens = report.tokens[first * size : (first + count) * size]
        return [_stored(names[first:], parent, tokens, self.namer.block_size, RAM)]

    def _tier_stored(self, report: TierStored) -> list[Event]:
        """One BlockStored per run of names that chain (each the parent of the next)."""
        medium, size = _tier(report.tier), self.namer.block_size
        out: list[Event] = []
        run: list[bytes] = []
        parent: bytes | None = None
        tokens = b""
        for name in report.names:
            known = self._described.get(name)
            if known is None:
                self.undescribed += 1
                known = _Described(None, b"")
            if run and known.parent == run[-1] and known.tokens and tokens:
                run.append(name)
                tokens += known.tokens
                continue
            if run:
                out.append(_stored(run, parent, tokens, size, medium))
            run, parent, tokens = [name], known.parent, known.tokens
        if run:
            out.append(_stored(run, parent, tokens, size, medium))
        return out

    def _describe(self, names: Iterable[bytes], parent: bytes | None, tokens: bytes) -> None:
        """Remember each name's parent and tokens, the oldest forgotten past the bound."""
        size = self.namer.block_size * TOKEN_BYTES
        for i, name in enumerate(names):
            self._described[name] = _Described(parent, tokens[i * size : (i + 1) * size])
            self._described.move_to_end(name)
            parent = name
        while len(self._described) > self.remembered:
            self._described.popitem(last=False)


def _tier(name: str) -> Medium:
    return TIER_MEDIA.get(name) or Medium("STORAGE", None, name)


def _stored(
    names: list[bytes], parent: bytes | None, tokens: bytes, block_size: int, medium: Medium
) -> BlockStored:
    ids = np.frombuffer(tokens, dtype=np.uint32).tolist()
    return BlockStored(
        block_hashes=list(names),
        parent_block_hash=parent,
        token_ids=ids,
        block_size=block_size,
        lora_id=None,
        medium=medium.medium,
        lora_name=None,
        locality=medium.locality,
        ownership=medium.ownership,
    )


def _removed(names: list[bytes], medium: Medium) -> BlockRemoved:
    return BlockRemoved(
        block_hashes=list(names),
        medium=medium.medium,
        locality=medium.locality,
        ownership=medium.ownership,
    )

"""The observers the publisher hands the cache (BlockEvents) and the tiers (TierEvents):
each call becomes one small immutable report, queued as is (O(1), no copy of KV: token
bytes are immutable and shared)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from prefixkv.cache.events import RemovalCause
from prefixkv.events.translate import (
    Described,
    RamRemoved,
    RamStored,
    Report,
    TierRemoved,
    TierStored,
)
from prefixkv.tokens import TokenBytes


class RamSink:
    """Implements :class:`~prefixkv.cache.events.BlockEvents` by reporting."""

    def __init__(self, report: Callable[[Report], None]) -> None:
        self._report = report

    def stored(
        self, namespace: Hashable, tokens: TokenBytes, first_block: int, blocks: Sequence[int]
    ) -> None:
        if blocks:
            self._report(RamStored(namespace, tokens, first_block, tuple(blocks)))

    def removed(self, blocks: Sequence[int], cause: RemovalCause) -> None:
        if blocks:
            self._report(RamRemoved(tuple(blocks)))


class TierSink:
    """Implements :class:`~prefixkv.tiers.protocol.TierEvents` by reporting."""

    def __init__(self, report: Callable[[Report], None]) -> None:
        self._report = report

    def described(self, names: Sequence[bytes], parent: bytes | None, tokens: bytes) -> None:
        if names:
            self._report(Described(tuple(names), parent, tokens))

    def stored(self, tier: str, names: Sequence[bytes]) -> None:
        if names:
            self._report(TierStored(tier, tuple(names)))

    def removed(self, tier: str, names: Sequence[bytes]) -> None:
        if names:
            self._report(TierRemoved(tier, tuple(names)))

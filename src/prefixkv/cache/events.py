"""BlockEvents: what the RAM cache tells an observer about the blocks its indexes hold.

The cache calls its ``events`` object (a :class:`NoBlockEvents` unless one is attached)
under its own lock, at the moment an index changes, so the calls arrive in exactly the order
the changes happened: a block id is always ``stored`` before it is ``removed``, and removed
before it is stored again. An observer must therefore only record what it is told and
return at once (append to a bounded queue, bump a counter): anything slow stalls every
request. It must not call back into the cache (the lock is held).

Blocks are pool block ids, the values the indexes hold; ``stored`` gives their tokens and
namespace, so that an observer can name them (e.g. the tiers' chained block names) or show
them, and ``removed`` only the ids: an observer that needs more keeps what ``stored`` said.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Literal, Protocol

from prefixkv.tokens import TokenBytes

RemovalCause = Literal["evicted", "reset"]
"""Why blocks left RAM: ``evicted`` to make room (a store, a restore or a running sequence
needed blocks), ``reset`` by ``reset``/``reset_tenant``."""


class BlockEvents(Protocol):
    """An observer of the blocks a cache indexes and drops. Called under the cache's lock:
    must not block and must not call the cache."""

    def stored(
        self, namespace: Hashable, tokens: TokenBytes, first_block: int, blocks: Sequence[int]
    ) -> None:
        """``blocks`` (pool ids) now hold blocks ``first_block ...`` of ``tokens`` in
        ``namespace``, and the blocks before ``first_block`` are indexed already (a path
        never has a gap). ``tokens`` may run past the last of them."""
        ...

    def removed(self, blocks: Sequence[int], cause: RemovalCause) -> None:
        """``blocks`` (pool ids, each one ``stored`` before) are no longer indexed."""
        ...


class NoBlockEvents:
    """The observer a cache starts with: ignores everything."""

    def stored(
        self, namespace: Hashable, tokens: TokenBytes, first_block: int, blocks: Sequence[int]
    ) -> None:
        return None

    def removed(self, blocks: Sequence[int], cause: RemovalCause) -> None:
        return None

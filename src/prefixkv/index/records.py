"""Records returned by :class:`~prefixkv.index.tree.PrefixIndex`."""

from __future__ import annotations

from collections.abc import Hashable, MutableSequence, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from prefixkv.index.node import Node
    from prefixkv.index.state import IndexState


class StaleMatchError(RuntimeError):
    """``pin(match)`` after some of the match's blocks were evicted since ``match``."""


class PinnedBlocksError(RuntimeError):
    """``discard`` of blocks a running sequence has pinned (nothing was removed)."""


class MatchHandle(NamedTuple):
    """Where a match ended, for ``pin``; opaque to users."""

    owner: IndexState
    node: Node | None
    epoch: int
    query: bytes | memoryview
    """Canonical bytes of the query as far as the match read it (at least its blocks)."""

    def __hash__(self) -> int:
        # Not the query's bytes: its view may be of an (unhashable) array, and equal handles
        # have the same owner, node and epoch anyway.
        return hash((self.owner, self.node, self.epoch))


class Match(NamedTuple):
    """The longest indexed prefix of a query.

    ``num_tokens`` is a multiple of the block size; ``values`` holds one value per matched
    block, in order: a tuple with the default value store, an ``array('q')`` with the int64
    one (:mod:`prefixkv.index.values`; a record: do not change it). Locks are counted per Match object (by identity), not per equal value.
    """

    num_tokens: int
    values: Sequence[Any]
    namespace: Hashable
    handle: MatchHandle

    @property
    def num_blocks(self) -> int:
        return len(self.values)

    def __hash__(self) -> int:
        # Not the values: an int64 store's are an (unhashable) array; equal matches have
        # the same blocks, namespace and handle anyway.
        return hash((self.num_tokens, self.namespace, self.handle))

    def __repr__(self) -> str:
        return (
            f"Match(num_tokens={self.num_tokens}, values={self.values!r},"
            f" namespace={self.namespace!r})"
        )


class Inserted(NamedTuple):
    """What ``PrefixIndex.insert_with_match`` returns."""

    rejected: MutableSequence[Any]
    """The given values not adopted, in block order (``insert``'s result)."""
    match: Match
    """The inserted prefix as now indexed (``peek`` of its blocks right after the insert)."""


class IndexStats(NamedTuple):
    """Counters since the index was created (a snapshot).

    The same names, with the same meaning, head :class:`~prefixkv.cache.CacheStats`, the
    server's ``/v1/cache/stats`` and its Prometheus ``prefixkv_cache_*`` series.
    """

    queries: int
    """Calls to ``match`` (on a cache: to ``lookup``)."""
    query_tokens: int
    """Tokens passed to ``match``, partial trailing blocks included."""
    hit_tokens: int
    """Tokens matched (whole blocks)."""
    full_hits: int
    """Matches that covered every full block of their query (at least one)."""
    partial_hits: int
    """Matches that covered some but not all full blocks."""
    misses: int
    """Matches that covered no block."""
    inserted_blocks: int
    """Blocks newly indexed (by ``insert``; on a cache, by ``store``)."""
    evicted_blocks: int
    """Blocks evicted."""

    @property
    def hit_rate(self) -> float:
        """Matched tokens / queried tokens (0.0 before any query)."""
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0

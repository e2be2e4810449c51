"""Offline explain (``prefixkv explain --log FILE``): why a prompt would (not) hit a cache
that served a request log, without the server.

The log is replayed through the real index at the size and policy given (:mod:`.replay`),
with an eviction observer that remembers, for every name block evicted, the log request
whose arrival evicted it. The prompt's own block names (computed as the server named the
log's blocks: :func:`prefixkv.server.request_log.namer_for` without tiers) are then looked
up as the server's ``/v1/cache/explain`` would look up the prompt's tokens, with the same
reasons in the same order (:func:`prefixkv.cache.explain.classify`):

- ``hit`` / ``partial_block``: every full block is cached (the tail shorter than a block
  never is);
- ``lower_tier``: the first missing block is in the replay's disk tier;
- ``evicted``: the first missing block was cached, then evicted (which request's arrival
  evicted it, and when it finished);
- ``diverged``: the prompt leaves a cached path that continues otherwise;
- ``cold``: nothing of the sort.

What the log cannot say: the text on either side of a divergence (it holds names, never
tokens), and ``other_namespace`` (a name chain starts from its namespace, so another salt's
blocks share no name with the prompt's). Cost: one replay of the log (O(blocks logged)) and
a probe of the prompt.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from prefixkv.index.evicted import EvictedRun
from prefixkv.whatif.records import NAME_BYTES, LoggedRequest
from prefixkv.whatif.replay import CacheConfig, Replay, name_tokens

OfflineReason = Literal["hit", "partial_block", "lower_tier", "evicted", "diverged", "cold"]


@dataclass(frozen=True)
class Eviction:
    """When a name block left the replayed RAM cache."""

    request: int
    """The log's request (1-based, in file order) whose arrival evicted it."""
    time: float | None
    """That request's finish time (Unix seconds), when its line has one."""


@dataclass(frozen=True)
class OfflineFinding:
    """Why the prompt would (not) hit the replayed cache after the whole log."""

    reason: OfflineReason
    prompt_tokens: int
    block_size: int
    hit_blocks: int
    """Leading full blocks of the prompt cached in RAM after the replay."""
    requests: int
    """Requests replayed."""
    config: CacheConfig
    eviction: Eviction | None = None
    """With ``evicted``: when the first missing block was evicted."""
    lower_tier_blocks: int = 0
    """With ``lower_tier``: leading missing blocks the disk tier holds."""

    @property
    def hit_tokens(self) -> int:
        return self.hit_blocks * self.block_size


class EvictionMemory:
    """An :class:`~prefixkv.index.evicted.EvictionObserver` of the replay's index: the
    latest eviction of every name, by the request being replayed (``request``, set by the
    caller before each feed). Grows with the distinct names evicted (at most the log's)."""

    def __init__(self) -> None:
        self.request = 0
        self.time: float | None = None
        self._when: dict[bytes, Eviction] = {}

    def evicted(self, run: EvictedRun) -> None:
        tokens, when = run.tokens, Eviction(self.request, self.time)
        for block in range(run.first_block, run.first_block + run.num_blocks):
            self._when[bytes(tokens[block * NAME_BYTES : (block + 1) * NAME_BYTES])] = when

    def find(self, name: bytes) -> Eviction | None:
        return self._when.get(name)


def explain_offline(
    requests: Iterable[LoggedRequest],
    names: Sequence[bytes],
    prompt_tokens: int,
    config: CacheConfig,
    block_bytes: int | None = None,
) -> OfflineFinding:
    """Replay ``requests`` at ``config``, then find where the prompt (its full blocks'
    ``names``, ``prompt_tokens`` tokens) leaves the cache. ``block_bytes``: KV bytes per
    block (default: the log's). Raises ValueError for an empty log, a log whose block size
    does not match the prompt's names, or a size that holds no block."""
    memory = EvictionMemory()
    replay: Replay | None = None
    size = 0
    for number, request in enumerate(requests, 1):
        if replay is None:
            size = request.block_size
            replay = Replay(config, block_bytes or request.block_bytes, on_evict=memory)
        memory.request, memory.time = number, request.time
        replay.feed(request)
    if replay is None:
        raise ValueError("the request log holds no request")
    if len(names) != prompt_tokens // size:
        raise ValueError(
            f"{len(names)} block names for {prompt_tokens} tokens: the log's blocks hold "
            f"{size} tokens"
        )
    return _classify(replay, memory, names, prompt_tokens, size, memory.request)


def _classify(
    replay: Replay,
    memory: EvictionMemory,
    names: Sequence[bytes],
    prompt_tokens: int,
    size: int,
    requests: int,
) -> OfflineFinding:
    probe = replay.index.probe(name_tokens(names))
    hit = probe.matched_blocks

    def found(
        reason: OfflineReason, eviction: Eviction | None = None, below: int = 0
    ) -> OfflineFinding:
        return OfflineFinding(
            reason, prompt_tokens, size, hit, requests, replay.config, eviction, below
        )

    if hit == len(names):
        return found("hit" if prompt_tokens % size == 0 else "partial_block")
    below = 0 if replay.disk is None else replay.disk.holds(names, hit)
    if below:
        return found("lower_tier", below=below)
    eviction = memory.find(names[hit])
    if eviction is not None:
        return found("evicted", eviction)
    # (at the root, "continues" means any cached prompt at all: every namespace shares it)
    if hit > 0 and probe.continues:
        return found("diverged")
    return found("cold")

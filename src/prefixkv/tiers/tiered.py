"""TieredCache: the RAM cache, with lower tiers (disk, Redis) below it.

Writing is write-through: every block the RAM cache indexes is copied out and queued for
every lower tier (:class:`~prefixkv.tiers.writer.Writer`, off the request path), so a block
evicted from RAM is already below it, not lost. Reading: ``open`` first brings what the
lower tiers hold past RAM's cached prefix back into RAM (``promote``, see
:mod:`prefixkv.tiers.promote`: bounded by the room RAM has and by a deadline, every record
verified), and only then opens RAM's table as usual.

Records leave the process sealed with the tier key if one is given (AES-256-GCM, keyed
block names: :mod:`prefixkv.tiers.seal`); without one they carry a checksum only, which is
allowed for private stores alone unless ``insecure`` (:mod:`prefixkv.tiers.policy`).

Costs added to an ``open``: one RAM peek, the names of the blocks past RAM (one hash each),
and per tier reached one read per ``batch_blocks`` blocks; a prompt wholly in
RAM pays only the peek. Everything else (running sequences, stats, resets) is the RAM
cache's: resets empty RAM only; the lower tiers keep their blocks (delete the directory or
the Redis keys to empty them).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from prefixkv.cache.explain import Explanation, LowerTier
from prefixkv.cache.layout import KVGeometry
from prefixkv.cache.paged import PrefixKVCache
from prefixkv.cache.pins import PrefixPin
from prefixkv.cache.pool import BlockPool
from prefixkv.cache.protocol import CacheStats, TierStats
from prefixkv.cache.table import BlockTable
from prefixkv.tiers.codec import BlockCodec, RawCodec
from prefixkv.tiers.key import TierKey
from prefixkv.tiers.naming import BlockNamer, fingerprint_of
from prefixkv.tiers.policy import check_policy
from prefixkv.tiers.promote import Promoter
from prefixkv.tiers.protocol import Tier, TierEvents
from prefixkv.tiers.seal import seal_for
from prefixkv.tiers.writer import Writer
from prefixkv.tokens import TokenBytes, as_token_bytes, token_count

log = logging.getLogger("prefixkv.tiers")

EXPLAIN_TIER_BLOCKS = 256
"""Names an explanation asks each tier about at most (one batched existence check)."""

PROMOTE_DEADLINE = 0.5
"""Seconds a promotion may read tiers before it stops at the next batch boundary: well
above what a 1,000-token prefix takes from a warm disk or Redis on loopback (``prefixkv
bench tiers``; ``docs/results.md``, "tiers")."""


class TieredCache:
    """Implements BlockStore over ``hot`` (RAM) and ``tiers`` (in order). Thread-safe."""

    def __init__(
        self,
        hot: PrefixKVCache,
        tiers: Sequence[Tier],
        model_fingerprint: bytes,
        *,
        key: TierKey | None = None,
        insecure: bool = False,
        codec: BlockCodec | None = None,
        batch_blocks: int = 16,
        max_queued_bytes: int = 256 << 20,
        promote_deadline: float = PROMOTE_DEADLINE,
    ) -> None:
        """``model_fingerprint``: 16 bytes naming the weights, dtype and KV layout (see
        ``prefixkv.engine.fingerprint``). The codec is part of every name, so exact and
        lossy records never mix. ``key`` seals records and keys block names; without one, a
        shared tier raises TierPolicyError (a ValueError naming the fix) unless
        ``insecure``. ``promote_deadline``: seconds a promotion reads tiers (> 0)."""
        if not promote_deadline > 0:
            raise ValueError(f"promote_deadline must be > 0 seconds, got {promote_deadline!r}")
        check_policy(tiers, key, insecure)
        self.hot = hot
        self.tiers = tuple(tiers)
        self.codec = codec or RawCodec()
        self.sealed = key is not None
        seal = seal_for(key)
        fingerprint = fingerprint_of(model_fingerprint, self.codec.name.encode())
        self.namer = BlockNamer(fingerprint, hot.block_size, key)
        self.writer = Writer(self.namer, self.codec, seal, max_queued_bytes)
        self.promoter = Promoter(
            hot, self.tiers, self.namer, seal, self.codec, self.writer, batch_blocks,
            promote_deadline,
        )  # fmt: skip
        hot.write_through = self
        hot.evictions.use_namer(self.namer)  # the ring's names are the tiers' record names

    # --- what is the RAM cache's --------------------------------------------------------

    @property
    def block_size(self) -> int:
        return self.hot.block_size

    @property
    def geometry(self) -> KVGeometry:
        return self.hot.geometry

    @property
    def layout(self) -> Any:
        return self.hot.layout

    @property
    def device(self) -> torch.device:
        return self.hot.device

    @property
    def pool(self) -> BlockPool:
        return self.hot.pool

    def grow(self, table: BlockTable, num_tokens: int) -> bool:
        return self.hot.grow(table, num_tokens)

    def reserve(self, table: BlockTable, num_tokens: int) -> int:
        return self.hot.reserve(table, num_tokens)

    def commit(self, table: BlockTable, tokens: TokenBytes) -> int:
        return self.hot.commit(table, tokens)

    def close(self, table: BlockTable) -> None:
        self.hot.close(table)

    def cached(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> int:
        """Tokens cached in RAM now (lower tiers are read only by ``open`` and ``promote``)."""
        return self.hot.cached(tokens, namespace)

    def available_blocks(self) -> int:
        return self.hot.available_blocks()

    def pin_prefix(
        self, tokens: Sequence[int] | Any, namespace: Hashable, ttl_seconds: float
    ) -> PrefixPin:
        """Pins RAM's blocks (those below RAM are not evicted by RAM's pressure anyway)."""
        return self.hot.pin_prefix(tokens, namespace, ttl_seconds)

    def unpin_prefix(self, pin_id: str, tenant: Hashable) -> PrefixPin | None:
        return self.hot.unpin_prefix(pin_id, tenant)

    def reset(self) -> int:
        return self.hot.reset()

    def reset_tenant(self, tenant: Hashable) -> int:
        return self.hot.reset_tenant(tenant)

    def stats(self) -> CacheStats:
        return self.hot.stats()

    def tenant_stats(self, tenant: Hashable) -> CacheStats:
        return self.hot.tenant_stats(tenant)

    def check_invariants(self) -> None:
        self.hot.check_invariants()

    def miss_tokens(self) -> dict[str, int]:
        return self.hot.miss_tokens()

    def tenant_miss_tokens(self, tenant: Hashable) -> dict[str, int]:
        return self.hot.tenant_miss_tokens(tenant)

    def explain(
        self, tokens: Sequence[int] | Any, namespace: Hashable = None, window: int = 64
    ) -> Explanation:
        """RAM's explanation; when RAM misses full blocks, also how many of them (from the
        first, at most ``EXPLAIN_TIER_BLOCKS``) the first tier holding the first one has:
        then the reason is ``lower_tier``. Asks the tiers whether they hold names, reads
        and promotes nothing."""
        buf = as_token_bytes(tokens)
        ram = self.hot.explain(buf, namespace, window)
        first = ram.finding.probe.matched_blocks
        stop = min(token_count(buf) // self.block_size, first + EXPLAIN_TIER_BLOCKS)
        if stop <= first or ram.finding.reason == "hit":
            return ram
        names = self.namer.names(buf, namespace, stop)[first:]
        for tier in self.tiers:
            held = tier.holds(names)
            count = next((i for i, h in enumerate(held) if not h), len(held))
            if count:
                return ram._replace(lower_tier=LowerTier(tier.name, count))
        return ram

    # --- reads: RAM first, then each tier -----------------------------------------------

    def open(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> BlockTable:
        buf = as_token_bytes(tokens)
        self.promote(buf, namespace)
        return self.hot.open(buf, namespace)

    def hold(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> BlockTable:
        return self.hot.hold(tokens, namespace)

    def discard(
        self, tokens: Sequence[int] | Any, first_block: int, namespace: Hashable = None
    ) -> int:
        return self.hot.discard(tokens, first_block, namespace)

    def promote(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> dict[str, int]:
        """Put the blocks of ``tokens`` that follow RAM's cached prefix back into RAM from
        the lower tiers, as far as they hold them, RAM has room and the deadline allows;
        return blocks found by tier name (see :mod:`prefixkv.tiers.promote`)."""
        return self.promoter.promote(as_token_bytes(tokens), namespace)

    # --- writes: WriteThrough for the RAM cache -----------------------------------------

    def write(
        self, namespace: Hashable, tokens: TokenBytes, first_block: int, blocks: Sequence[int]
    ) -> None:
        """Copy ``blocks`` out of the pool (they are stable only during this call) and queue
        them for every tier."""
        if blocks and self.tiers:
            data = self.hot.pool.read_blocks(blocks)
            self.writer.put_blocks(namespace, tokens, first_block, data, self.tiers)  # immutable

    def observe(self, events: TierEvents) -> None:
        """Tell ``events`` what every lower tier holds now (as far as it knows: see
        ``Tier.announce``), then starts and stops holding, and what the records written to
        them hold (RAM's own blocks: ``hot.events``)."""
        self.writer.events = events
        for tier in self.tiers:
            tier.events = events
            tier.announce()

    # --- lifecycle and stats ------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued block reached the tiers; False on timeout."""
        return self.writer.flush(timeout)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Write what is queued (up to ``timeout`` seconds), then close the tiers."""
        deadline = time.monotonic() + timeout
        self.writer.stop(timeout)
        for tier in self.tiers:
            tier.close()
        if time.monotonic() > deadline:
            log.warning("tier writer: blocks still queued at shutdown were not written")

    def tier_stats(self) -> list[TierStats]:
        """One record per lower tier, in order."""
        with self.promoter.lock:
            counts = {
                name: (c.hits, c.misses, c.promoted, c.rejected, c.cut)
                for name, c in self.promoter.counts.items()
            }
        return [TierStats(tier.name, *counts[tier.name], tier.counters()) for tier in self.tiers]

    @property
    def dropped_writes(self) -> int:
        """Blocks not written down because the writer's queue was full."""
        return self.writer.dropped_blocks

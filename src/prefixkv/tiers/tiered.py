"""TieredCache: the RAM cache, with lower tiers (disk, Redis) below it.

Writing is write-through: every block the RAM cache indexes is copied out and queued for
every lower tier (:class:`~prefixkv.tiers.writer.Writer`, off the request path), so a block
evicted from RAM is already below it, not lost. Reading: ``lookup`` and ``open`` first find
how far RAM holds the prompt, then continue in each lower tier in order (disk, then Redis),
in batches of ``batch_blocks`` names per read (one Redis MGET each), verify every record
(:func:`~prefixkv.tiers.record.verify`), put the verified blocks back into RAM
(``PrefixKVCache.restore``), and only then look up RAM as usual. A record that fails
verification is a miss: counted, logged, removed from its tier, never served. Blocks found
in a lower tier are also copied to the tiers above it (a Redis hit lands on disk too).

Costs added to a lookup: one RAM peek, the names of the blocks past RAM (~0.1 us each), and
per tier reached one read per ``batch_blocks`` blocks; a prompt wholly in RAM pays only the
peek. Everything else (running sequences, stats, resets) is the RAM cache's: resets empty
RAM only; the lower tiers keep their blocks (delete the directory or the Redis keys to
empty them).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from functools import partial
from typing import Any, NamedTuple

import torch

from prefixkv.cache.lease import Lease
from prefixkv.cache.paged import PrefixKVCache
from prefixkv.cache.pool import BlockPool
from prefixkv.cache.protocol import CacheStats
from prefixkv.cache.table import BlockTable
from prefixkv.tiers.codec import BlockCodec, RawCodec
from prefixkv.tiers.naming import BlockNamer, fingerprint_of
from prefixkv.tiers.protocol import Tier, TierCounters
from prefixkv.tiers.record import Expected, VerificationError, verify
from prefixkv.tiers.writer import Writer
from prefixkv.tokens import TOKEN_BYTES, TokenBytes, as_token_bytes, token_count

log = logging.getLogger("prefixkv.tiers")

Fill = Callable[[torch.Tensor], None]
"""Writes one verified block into the pool block view it is given."""


class TierStats(NamedTuple):
    """One lower tier: what lookups found in it, then its own counters."""

    tier: str
    hit_blocks: int
    """Verified blocks it supplied to lookups."""
    missed_lookups: int
    """Lookups that asked it and got no block."""
    promoted_blocks: int
    """Blocks of its put back into RAM."""
    verification_failures: int
    """Records rejected on load (checksum, tokens, name, model), never served."""
    counters: TierCounters


class _Counts:
    __slots__ = ("hits", "misses", "promoted", "rejected")

    def __init__(self) -> None:
        self.hits = self.misses = self.promoted = self.rejected = 0


class TieredCache:
    """Implements BlockStore over ``hot`` (RAM) and ``tiers`` (in order). Thread-safe."""

    def __init__(
        self,
        hot: PrefixKVCache,
        tiers: Sequence[Tier],
        model_fingerprint: bytes,
        *,
        codec: BlockCodec | None = None,
        batch_blocks: int = 16,
        max_queued_bytes: int = 256 << 20,
    ) -> None:
        """``model_fingerprint``: 16 bytes naming the weights, dtype and KV layout (see
        ``prefixkv.engine.fingerprint``). The codec is part of every name, so exact and
        lossy records never mix."""
        self.hot = hot
        self.tiers = tuple(tiers)
        self.codec = codec or RawCodec()
        self.codecs = {self.codec.id: self.codec}
        self.batch_blocks = batch_blocks
        fingerprint = fingerprint_of(model_fingerprint, self.codec.name.encode())
        self.namer = BlockNamer(fingerprint, hot.block_size)
        self.writer = Writer(self.namer, self.codec, max_queued_bytes)
        self._counts = {tier.name: _Counts() for tier in self.tiers}
        self._lock = threading.Lock()
        hot.write_through = self

    # --- what is the RAM cache's --------------------------------------------------------

    @property
    def block_size(self) -> int:
        return self.hot.block_size

    @property
    def layout(self) -> Any:
        return self.hot.layout

    @property
    def device(self) -> torch.device:
        return self.hot.device

    @property
    def pool(self) -> BlockPool:
        return self.hot.pool

    def store(self, tokens: Sequence[int] | Any, kv: Any, namespace: Hashable = None) -> int:
        return self.hot.store(tokens, kv, namespace)

    def grow(self, table: BlockTable, num_tokens: int) -> bool:
        return self.hot.grow(table, num_tokens)

    def commit(self, table: BlockTable, tokens: TokenBytes) -> int:
        return self.hot.commit(table, tokens)

    def close(self, table: BlockTable) -> None:
        self.hot.close(table)

    def cached(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> int:
        """Tokens cached in RAM now (lower tiers are read only by lookup and open)."""
        return self.hot.cached(tokens, namespace)

    def available_blocks(self) -> int:
        return self.hot.available_blocks()

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

    # --- reads: RAM first, then each tier -----------------------------------------------

    def lookup(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> Lease:
        buf = as_token_bytes(tokens)
        self.promote(buf, namespace)
        return self.hot.lookup(buf, namespace)

    def open(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> BlockTable:
        buf = as_token_bytes(tokens)
        self.promote(buf, namespace)
        return self.hot.open(buf, namespace)

    def promote(self, tokens: Sequence[int] | Any, namespace: Hashable = None) -> dict[str, int]:
        """Put the blocks of ``tokens`` that follow RAM's cached prefix back into RAM from
        the lower tiers, as far as they hold them; return blocks found by tier name."""
        buf = as_token_bytes(tokens)
        size = self.block_size
        full = token_count(buf) // size
        pos = first = self.hot.cached(buf, namespace) // size
        if pos == full or not self.tiers:
            return {}
        names = self.namer.names(buf, namespace, full)
        found: list[Fill] = []
        by_tier: dict[str, int] = {}
        for depth, tier in enumerate(self.tiers):
            start = pos
            records, pos = self._read_run(tier, buf, namespace, names, pos, full, found)
            by_tier[tier.name] = pos - start
            self.writer.put_records(records, self.tiers[:depth])
            with self._lock:
                counts = self._counts[tier.name]
                counts.hits += pos - start
                counts.misses += pos == start
            if pos == full:
                break
        if found:
            restored = self.hot.restore(buf, first, found, namespace)
            self._count_promoted(by_tier, restored)
        log.debug(
            "lookup of %d tokens: %d in RAM, %s",
            token_count(buf),
            first * size,
            ", ".join(f"{n * size} from {name}" for name, n in by_tier.items()) or "no tier",
        )
        return by_tier

    def _read_run(
        self,
        tier: Tier,
        buf: TokenBytes,
        namespace: Hashable,
        names: list[bytes],
        pos: int,
        full: int,
        found: list[Fill],
    ) -> tuple[list[tuple[bytes, bytes]], int]:
        """Read ``tier`` from block ``pos`` until a miss; append verified blocks to
        ``found``; return their records and the new position."""
        kept: list[tuple[bytes, bytes]] = []
        while pos < full:
            batch = names[pos : pos + self.batch_blocks]
            for raw in tier.get_many(batch):
                block = (
                    None if raw is None else self._verified(tier, raw, buf, namespace, names, pos)
                )
                if block is None:
                    return kept, pos
                found.append(block)
                kept.append((names[pos], raw))  # type: ignore[arg-type]
                pos += 1
        return kept, pos

    def _verified(
        self,
        tier: Tier,
        raw: bytes | bytearray,
        buf: TokenBytes,
        namespace: Hashable,
        names: list[bytes],
        pos: int,
    ) -> Fill | None:
        """What writes the block in ``raw`` into a pool block, if ``raw`` is exactly block
        ``pos`` of ``buf``; else None (the record is counted, logged and removed from
        ``tier``)."""
        step = self.block_size * TOKEN_BYTES
        parent = names[pos - 1] if pos else self.namer.root(namespace)
        tokens = buf[pos * step : (pos + 1) * step]
        try:
            codec_id, payload = verify(
                raw, Expected(self.namer.fingerprint, names[pos], parent, tokens)
            )
            codec = self.codecs.get(codec_id)
            if codec is None:
                raise VerificationError("codec", f"codec {codec_id} is not {self.codec.name}")
            expected = codec.payload_bytes(self.hot.layout, self.block_size)
            if len(payload) != expected:
                raise VerificationError("size", f"payload of {len(payload)} bytes, not {expected}")
            return partial(codec.decode_into, payload)
        except (VerificationError, ValueError) as exc:
            log.warning("%s tier: rejected block %s (%s)", tier.name, names[pos].hex(), exc)
            with self._lock:
                self._counts[tier.name].rejected += 1
            tier.discard(names[pos])
            return None

    def _count_promoted(self, by_tier: dict[str, int], restored: int) -> None:
        with self._lock:
            for name, count in by_tier.items():
                taken = min(count, restored)
                self._counts[name].promoted += taken
                restored -= taken

    # --- writes: WriteThrough for the RAM cache -----------------------------------------

    def write(
        self, namespace: Hashable, tokens: TokenBytes, first_block: int, blocks: Sequence[int]
    ) -> None:
        """Copy ``blocks`` out of the pool (they are stable only during this call) and queue
        them for every tier."""
        if blocks and self.tiers:
            data = self.hot.pool.read_blocks(blocks)
            self.writer.put_blocks(namespace, tokens, first_block, data, self.tiers)  # immutable

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
        with self._lock:
            counts = {
                name: (c.hits, c.misses, c.promoted, c.rejected) for name, c in self._counts.items()
            }
        return [TierStats(tier.name, *counts[tier.name], tier.counters()) for tier in self.tiers]

    @property
    def dropped_writes(self) -> int:
        """Blocks not written down because the writer's queue was full."""
        return self.writer.dropped_blocks

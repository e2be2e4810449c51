"""Promotion: blocks of a prompt read back from the lower tiers into the RAM cache.

From the end of RAM's cached prefix, each tier in order (disk, then Redis) is read in
batches of ``batch_blocks`` names (one Redis MGET each) until its first miss; every record
is verified (:func:`~prefixkv.tiers.record.verify`) and each batch's verified blocks are put
back into RAM (``PrefixKVCache.restore``) before the next batch is read, so a promotion holds
at most one batch of records and decoded payloads at a time (16 x 2 x 737 KB for SmolLM2,
sealed), whatever the prompt's length: holding a whole document's (~45 MB for 1,000 tokens)
until the end grew the server's heap in steps of that size in `prefixkv bench soak`. A
record that fails verification is a miss: counted, logged, removed from its tier, never
served. Blocks found in a lower tier are also queued for the tiers above it (a Redis hit
lands on disk too).

Two bounds keep a promotion from costing more than it can bring:

- *room*: no more blocks are read than RAM can keep for this prompt now
  (``PrefixKVCache.room_for``: free blocks plus those its tenant may evict, not the
  prompt's own): a 4-block pool reads at most 4 blocks, whatever the tiers hold.
- *deadline*: reading stops at the first batch boundary ``deadline`` seconds after the
  promotion began (a slow Redis, a cold disk); blocks already verified are kept. A single
  read is bounded by its tier (Redis: its socket timeout).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from functools import partial

import torch

from prefixkv.cache.paged import PrefixKVCache
from prefixkv.tiers.codec import BlockCodec
from prefixkv.tiers.naming import BlockNamer
from prefixkv.tiers.protocol import Tier
from prefixkv.tiers.record import Expected, VerificationError, verify
from prefixkv.tiers.seal import Seal
from prefixkv.tiers.writer import Writer
from prefixkv.tokens import TOKEN_BYTES, TokenBytes, token_count

log = logging.getLogger("prefixkv.tiers")

Fill = Callable[[torch.Tensor], None]
"""Writes one verified block into the pool block view it is given."""


class Counts:
    """What promotions found in one tier (under the Promoter's lock)."""

    __slots__ = ("cut", "hits", "misses", "promoted", "rejected")

    def __init__(self) -> None:
        self.hits = self.misses = self.promoted = self.rejected = self.cut = 0


class _Run:
    """One promotion's reading state: the prompt, its names, and how far RAM holds it
    (``cached``, in blocks: where reading goes on, since every verified block is restored or
    reading stops)."""

    def __init__(
        self, buf: TokenBytes, namespace: Hashable, names: list[bytes], deadline: float, first: int
    ):
        self.buf, self.namespace, self.names, self.deadline = buf, namespace, names, deadline
        self.cached = first
        self.cut = False
        self.full = False
        """RAM kept fewer blocks than a batch offered (room taken by another request)."""


class Promoter:
    """Reads, verifies and restores for a TieredCache. Thread-safe."""

    def __init__(
        self,
        hot: PrefixKVCache,
        tiers: Sequence[Tier],
        namer: BlockNamer,
        seal: Seal,
        codec: BlockCodec,
        writer: Writer,
        batch_blocks: int,
        deadline: float,
    ) -> None:
        self.hot, self.tiers, self.namer, self.seal = hot, tuple(tiers), namer, seal
        self.codecs = {codec.id: codec}
        self.writer = writer
        self.batch_blocks = batch_blocks
        self.deadline = deadline
        self.counts = {tier.name: Counts() for tier in self.tiers}
        self.lock = threading.Lock()

    def promote(self, buf: TokenBytes, namespace: Hashable) -> dict[str, int]:
        """Put blocks of ``buf`` past RAM's cached prefix back into RAM, within the room and
        the deadline; return blocks found by tier name."""
        started = time.monotonic()
        size = self.hot.block_size
        first = self.hot.cached(buf, namespace) // size
        limit = min(token_count(buf) // size, first + self.hot.room_for(buf, namespace))
        if limit <= first or not self.tiers:
            return {}
        names = self.namer.names(buf, namespace, limit)
        run = _Run(buf, namespace, names, started + self.deadline, first)
        by_tier: dict[str, int] = {}
        for depth, tier in enumerate(self.tiers):
            start = run.cached
            self._read_run(tier, self.tiers[:depth], run)
            found = by_tier[tier.name] = run.cached - start
            with self.lock:
                counts = self.counts[tier.name]
                counts.hits += found
                counts.misses += found == 0 and not run.cut
                counts.cut += run.cut
            if run.cached == limit or run.cut or run.full:
                break
        self._count_promoted(by_tier, run.cached - first)
        log.debug(
            "lookup of %d tokens: %d in RAM, room for %d more, %s%s",
            token_count(buf),
            first * size,
            (limit - first) * size,
            ", ".join(f"{n * size} from {name}" for name, n in by_tier.items()) or "no tier",
            " (cut at the deadline)" if run.cut else "",
        )
        return by_tier

    def _read_run(self, tier: Tier, above: Sequence[Tier], run: _Run) -> None:
        """Read ``tier`` from block ``run.cached`` until a miss, the room's end, the deadline
        or a full RAM, a batch at a time: restore each batch's verified blocks (advancing
        ``run.cached``) and queue their records for the tiers ``above`` it."""
        while run.cached < len(run.names):
            if time.monotonic() >= run.deadline:
                run.cut = True
                return
            pos = run.cached
            found: list[Fill] = []
            kept: list[tuple[bytes, bytes]] = []
            for raw in tier.get_many(run.names[pos : pos + self.batch_blocks]):
                block = None if raw is None else self._verified(tier, raw, run, pos + len(found))
                if block is None:
                    break
                kept.append((run.names[pos + len(found)], raw))  # type: ignore[arg-type]
                found.append(block)
            if kept and above:
                self._describe(run, pos, len(kept))
            self.writer.put_records(kept, above)
            self._restore(run, found)
            if len(found) < self.batch_blocks or run.full:
                return  # a miss (or the room's end) in this batch, or RAM full

    def _describe(self, run: _Run, pos: int, count: int) -> None:
        """Tell the writer's observer what the verified records of blocks ``pos ...`` hold
        (before they are queued for the tiers above: see TierEvents)."""
        step = self.hot.block_size * TOKEN_BYTES
        parent = run.names[pos - 1] if pos else None
        tokens = run.buf[pos * step : (pos + count) * step]
        self.writer.events.described(run.names[pos : pos + count], parent, tokens)

    def _restore(self, run: _Run, found: list[Fill]) -> None:
        """Put ``found`` (the blocks after RAM's ``run.cached``) into RAM, advancing
        ``run.cached`` by what it kept (all of them, or fewer and ``run.full``)."""
        if not found:
            return
        kept = self.hot.restore(run.buf, run.cached, found, run.namespace)
        run.cached += kept
        run.full = kept < len(found)

    def _verified(self, tier: Tier, raw: bytes | bytearray, run: _Run, pos: int) -> Fill | None:
        """What writes the block in ``raw`` into a pool block, if ``raw`` is exactly block
        ``pos`` of the prompt; else None (the record is counted, logged and removed from
        ``tier``)."""
        step = self.hot.block_size * TOKEN_BYTES
        names = run.names
        parent = names[pos - 1] if pos else self.namer.root(run.namespace)
        tokens = run.buf[pos * step : (pos + 1) * step]
        try:
            expected = Expected(self.namer.fingerprint, names[pos], parent, tokens)
            codec_id, payload = verify(raw, expected, self.seal)
            codec = self.codecs.get(codec_id)
            if codec is None:
                raise VerificationError("codec", f"codec {codec_id} is not this cache's")
            size = codec.payload_bytes(self.hot.layout, self.hot.block_size)
            if len(payload) != size:
                raise VerificationError("size", f"payload of {len(payload)} bytes, not {size}")
            return partial(codec.decode_into, payload)
        except (VerificationError, ValueError) as exc:
            log.warning("%s tier: rejected block %s (%s)", tier.name, names[pos].hex(), exc)
            with self.lock:
                self.counts[tier.name].rejected += 1
            tier.discard(names[pos])
            return None

    def _count_promoted(self, by_tier: dict[str, int], restored: int) -> None:
        """Attribute ``restored`` blocks to the tiers in order (each supplied a run)."""
        with self.lock:
            for name, count in by_tier.items():
                taken = min(count, restored)
                self.counts[name].promoted += taken
                restored -= taken

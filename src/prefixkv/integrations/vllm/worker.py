"""The connector's worker half: vLLM's KV blocks to records and back.

A vLLM block is stored as one record whose payload is that block's bytes in every layer's
cache tensor, in layer order (the layout is vLLM's own; the fingerprint names it). Loads
read each run's records from the tiers in order (the disk before Redis), verify each one
(:func:`prefixkv.tiers.record.verify`: seal, fingerprint, name, parent, tokens, size) and
copy it into vLLM's blocks before the forward pass. The first block that is missing or
fails verification ends the run: it and the run's later blocks are reported to vLLM as
failed loads (it rewinds the request and recomputes them), and a record that failed is
removed from its tier. Saves run after the forward pass, synchronously (vLLM may reuse a
block as soon as the step ends), and skip requests whose load failed this step: their
later blocks were computed over unloaded KV.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from prefixkv.integrations.vllm.plan import BlockRun
from prefixkv.tiers.codec import RawCodec
from prefixkv.tiers.protocol import Tier
from prefixkv.tiers.record import Expected, VerificationError, encode, verify
from prefixkv.tiers.seal import Seal

# vLLM configures the "vllm" logger tree only: under it, these lines reach its log.
log = logging.getLogger("vllm.prefixkv")


@dataclass(frozen=True)
class WorkerCounters:
    """Totals since start, for logs and tests."""

    loaded_blocks: int
    failed_blocks: int
    saved_blocks: int
    failures: dict[str, int]
    """Failed loads by reason: ``missing`` or a verification reason (``checksum``...)."""
    sources: dict[str, int]
    """Loaded blocks by the tier they came from."""

    def describe(self) -> str:
        """One line of ``key=value`` fields (what tests and operators grep for)."""
        by_tier = ",".join(f"{k}:{v}" for k, v in sorted(self.sources.items())) or "-"
        why = ",".join(f"{k}:{v}" for k, v in sorted(self.failures.items())) or "-"
        return (
            f"loaded={self.loaded_blocks} failed={self.failed_blocks} "
            f"saved={self.saved_blocks} sources={by_tier} failures={why}"
        )


class WorkerSide:
    """Owned by vLLM's worker thread: not thread-safe."""

    def __init__(
        self,
        tiers: Sequence[Tier],
        fingerprint: bytes,
        seal: Seal,
        kv_caches: dict[str, torch.Tensor],
    ) -> None:
        """``kv_caches``: vLLM's cache tensor of each attention layer, blocks first."""
        self.tiers = tuple(tiers)
        self.fingerprint = fingerprint
        self.seal = seal
        self.layers = [_blocks_of(name, t) for name, t in kv_caches.items()]
        self.block_bytes = sum(layer.shape[1] for layer in self.layers)
        self._failed_requests: set[str] = set()
        self._loaded = self._saved = 0
        self._failures: Counter[str] = Counter()
        self._sources: Counter[str] = Counter()

    def load(self, runs: Sequence[BlockRun]) -> set[int]:
        """Fill each run's vLLM blocks; return the vLLM block ids that could not be."""
        self._failed_requests.clear()
        failed: set[int] = set()
        for run in runs:
            loaded = self._load_run(run)
            self._loaded += loaded
            if loaded < len(run.names):
                failed.update(run.block_ids[loaded:])
                self._failed_requests.add(run.request_id)
        if runs:
            log.info("prefixkv: step loaded %d blocks, %d failed; totals %s",
                     sum(len(r.names) for r in runs) - len(failed), len(failed),
                     self.counters().describe())  # fmt: skip
        return failed

    def _load_run(self, run: BlockRun) -> int:
        """Blocks of ``run`` loaded, from the first."""
        found = self._fetch(run.names)
        for i, (raw, tier) in enumerate(found):
            if raw is None or tier is None:
                self._failures["missing"] += len(run.names) - i
                return i
            expected = Expected(
                self.fingerprint, run.names[i], run.parent_of(i), run.block_tokens(i)
            )
            try:
                codec, payload = verify(raw, expected, self.seal)
                if codec != RawCodec.id or len(payload) != self.block_bytes:
                    raise VerificationError(
                        "size", f"{len(payload)} bytes, vLLM's block has {self.block_bytes}"
                    )
            except VerificationError as exc:
                log.warning("prefixkv: %s record %s failed verification (%s): vLLM recomputes it",
                            tier.name, run.names[i].hex(), exc)  # fmt: skip
                tier.discard(run.names[i])
                self._failures[exc.reason] += len(run.names) - i
                return i
            self._write_block(run.block_ids[i], payload)
            self._sources[tier.name] += 1
        return len(run.names)

    def _fetch(self, names: Sequence[bytes]) -> list[tuple[bytes | bytearray | None, Tier | None]]:
        """Each name's record and the tier it came from, each tier asked for what the
        ones before it lack."""
        found: list[tuple[bytes | bytearray | None, Tier | None]] = [(None, None)] * len(names)
        for tier in self.tiers:
            wanted = [i for i, (raw, _) in enumerate(found) if raw is None]
            if not wanted:
                break
            notice = getattr(tier, "notice", None)  # the disk tier: see files others wrote
            if notice is not None:
                notice([names[i] for i in wanted])
            for i, raw in zip(wanted, tier.get_many([names[i] for i in wanted]), strict=True):
                if raw is not None:
                    found[i] = (raw, tier)
        return found

    def _write_block(self, block_id: int, payload: memoryview) -> None:
        source = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        offset = 0
        for layer in self.layers:
            width = layer.shape[1]
            layer[block_id].copy_(source[offset : offset + width])
            offset += width

    def save(self, runs: Sequence[BlockRun]) -> None:
        """Write each run's blocks to every tier (names a tier holds are skipped by it)."""
        records = []
        for run in runs:
            if run.request_id in self._failed_requests:
                continue
            for i, block_id in enumerate(run.block_ids):
                payload = b"".join(bytes(layer[block_id].numpy().data) for layer in self.layers)
                records.append(
                    (run.names[i], encode(self.seal, RawCodec.id, self.fingerprint, run.names[i],
                                          run.parent_of(i), run.block_tokens(i), payload))
                )  # fmt: skip
        for tier in self.tiers:
            tier.put_many(records)
        self._saved += len(records)
        if records:
            log.info("prefixkv: step saved %d blocks; totals %s", len(records),
                     self.counters().describe())  # fmt: skip

    def counters(self) -> WorkerCounters:
        return WorkerCounters(
            self._loaded, sum(self._failures.values()), self._saved, dict(self._failures),
            dict(self._sources),
        )  # fmt: skip


def _blocks_of(name: str, cache: torch.Tensor) -> torch.Tensor:
    """``cache`` as ``[blocks, bytes of a block]`` (a view: writes reach vLLM's cache).
    ValueError naming the layer when its blocks are not each one contiguous run (a layout
    with K and V outermost, as some GPU backends use: not supported)."""
    try:
        return cache.view(cache.shape[0], -1).view(torch.uint8)
    except RuntimeError:
        raise ValueError(
            f"layer {name}: KV cache {tuple(cache.shape)} with strides {cache.stride()} does "
            f"not hold each block contiguously; the prefixkv connector needs blocks first"
        ) from None

"""Writer: copies blocks down to the lower tiers on a background thread.

The request path only copies a block's KV out of the pool (one ``index_select``) and
queues it; naming, encoding, sealing and the tiers' writes run here.
The queue is bounded in bytes: when the tiers cannot keep up, new blocks are dropped (counted
in ``dropped_blocks``), never the request slowed.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Hashable, Sequence
from typing import NamedTuple

import torch

from prefixkv.threads import current_threads, helper_thread
from prefixkv.tiers.codec import BlockCodec
from prefixkv.tiers.naming import BlockNamer
from prefixkv.tiers.protocol import NoTierEvents, Tier, TierEvents
from prefixkv.tiers.record import encode
from prefixkv.tiers.seal import Seal

log = logging.getLogger("prefixkv.tiers")


class _Blocks(NamedTuple):
    """KV to encode: blocks ``first ... first + n - 1`` of ``tokens``."""

    namespace: Hashable
    tokens: bytes
    first: int
    data: torch.Tensor  # [layers, 2, heads, n, block_size, dim], owned by the queue
    tiers: tuple[Tier, ...]


class _Records(NamedTuple):
    """Records already encoded (read from a lower tier), to copy to upper ones."""

    records: list[tuple[bytes, bytes]]
    tiers: tuple[Tier, ...]


class Writer:
    """One background thread writing queued blocks to tiers, in order. Thread-safe."""

    def __init__(
        self, namer: BlockNamer, codec: BlockCodec, seal: Seal, max_queued_bytes: int
    ) -> None:
        self.namer = namer
        self.codec = codec
        self.seal = seal
        self.max_queued_bytes = max_queued_bytes
        self.dropped_blocks = 0
        self.events: TierEvents = NoTierEvents()  # told what each job's records hold
        self._jobs: deque[_Blocks | _Records] = deque()
        # The last chain named (writer thread only): a running sequence's blocks arrive one
        # commit at a time, each job extending the last, so naming resumes where it stopped
        # instead of rehashing the prompt from block 0 (O(n) per prompt, not O(n^2)).
        self._chain: tuple[Hashable, bytes, int, bytes] | None = None
        self._queued_bytes = 0
        self._busy = False
        self._stopping = False
        self._cond = threading.Condition()
        current_threads()  # this thread keeps its count when the writer claims one
        self._thread = threading.Thread(target=self._run, name="prefixkv-tier-writer", daemon=True)
        self._thread.start()

    def put_blocks(
        self,
        namespace: Hashable,
        tokens: bytes,
        first: int,
        data: torch.Tensor,
        tiers: Sequence[Tier],
    ) -> None:
        """Queue ``data`` (a copy the writer may keep) for ``tiers``, or drop it if full."""
        self._enqueue(_Blocks(namespace, tokens, first, data, tuple(tiers)), data.nbytes)

    def put_records(self, records: list[tuple[bytes, bytes]], tiers: Sequence[Tier]) -> None:
        if records and tiers:
            self._enqueue(_Records(records, tuple(tiers)), sum(len(r) for _, r in records))

    def _enqueue(self, job: _Blocks | _Records, nbytes: int) -> None:
        with self._cond:
            if self._stopping:
                return
            if self._queued_bytes + nbytes > self.max_queued_bytes:
                self.dropped_blocks += (
                    len(job.records) if isinstance(job, _Records) else job.data.shape[3]
                )
                return
            self._jobs.append(job)
            self._queued_bytes += nbytes
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued block is written; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._jobs and not self._busy, timeout)

    def stop(self, timeout: float = 30.0) -> None:
        """Write what is queued (up to ``timeout``), then end the thread. Idempotent."""
        self.flush(timeout)
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout)

    def _run(self) -> None:
        helper_thread()
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._jobs or self._stopping)
                if not self._jobs:
                    return
                job = self._jobs.popleft()
                self._busy = True
            try:
                self._write(job)
            except Exception:  # a bug here must not end the thread (the queue would stall)
                log.exception("tier writer: a write failed")
            with self._cond:
                self._busy = False
                self._queued_bytes -= (
                    job.data.nbytes
                    if isinstance(job, _Blocks)
                    else sum(len(r) for _, r in job.records)
                )
                self._cond.notify_all()

    def _write(self, job: _Blocks | _Records) -> None:
        records = job.records if isinstance(job, _Records) else self._encode(job)
        for tier in job.tiers:
            tier.put_many(records)

    def _parent_of(self, job: _Blocks) -> bytes:
        """The name of the block before the job's first: from the last chain if the job
        continues it (same namespace, same tokens up to there), else hashed from block 0."""
        if job.first == 0:
            return self.namer.root(job.namespace)
        if self._chain is not None:
            namespace, tokens, end, name = self._chain
            start = job.first * self.namer.block_size * 4
            continues = namespace == job.namespace and end == start <= len(job.tokens)
            if continues and memoryview(tokens)[:end] == memoryview(job.tokens)[:end]:
                return name
        return self.namer.names(job.tokens, job.namespace, job.first)[-1]

    def _encode(self, job: _Blocks) -> list[tuple[bytes, bytes]]:
        count = job.data.shape[3]
        parent = self._parent_of(job)
        names = self.namer.extend(parent, job.tokens, job.first, job.first + count)
        size = self.namer.block_size * 4
        self._chain = (job.namespace, job.tokens, (job.first + count) * size, names[-1])
        span = job.tokens[job.first * size : (job.first + count) * size]
        self.events.described(names, parent if job.first else None, span)
        out = []
        for i in range(count):
            block = job.first + i
            name = names[i]
            tokens = job.tokens[block * size : (block + 1) * size]
            try:
                payload = self.codec.encode(job.data[:, :, :, i])
            except ValueError as exc:  # e.g. a value int8/int4 cannot hold: blocks after
                # it would be unreachable (a lookup stops at the first missing block)
                log.warning("tier writer: block not written below RAM: %s", exc)
                with self._cond:
                    self.dropped_blocks += count - i
                break
            fingerprint = self.namer.fingerprint
            record = encode(self.seal, self.codec.id, fingerprint, name, parent, tokens, payload)
            out.append((name, record))
            parent = name
        return out

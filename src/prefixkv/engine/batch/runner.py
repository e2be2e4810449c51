"""BatchRunner: continuous batching over the pool (one thread, one forward pass per step).

Requests join the running batch between steps and leave it as they finish or are cancelled.
Each step (see :mod:`.plan`) feeds one token of every decoding sequence plus prefill chunks
under ``max_batch_tokens``; KV is written to and read from the pool in place (see
:mod:`.attention`); every block a sequence fills is indexed at once, so a request arriving
meanwhile with the same prefix reuses it. When the pool cannot supply a block, the most
recently admitted sequence is preempted: its table closes (full blocks stay indexed), and it
resumes later from its cached prefix with its sampler and text intact. Nothing is lost and no
request sees an out-of-memory error.

Thread-safety: ``submit``, ``drain``, ``cancel_running``, ``stop`` and the read-only counters
may be called from any thread; everything else runs on the runner thread.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

from prefixkv.cache.protocol import BlockStore
from prefixkv.engine.batch import attention, kernels, passes
from prefixkv.engine.batch.canary import NO_CANARY, Canary
from prefixkv.engine.batch.passes import ModelPass
from prefixkv.engine.batch.plan import Feed, input_of, layout_of, note_held, plan_step
from prefixkv.engine.batch.records import DEFAULT_LIMITS, BatchLimits, StepReport
from prefixkv.engine.batch.sequence import (
    UNINDEXED,
    RequestCancelled,
    Sequence,
    Sink,
)
from prefixkv.engine.linear import padding_of
from prefixkv.engine.request import Completion, InvalidRequestError, Request
from prefixkv.engine.role import wait_until
from prefixkv.engine.sinks import Collect
from prefixkv.models.family import text_config
from prefixkv.threads import compute_on, current_threads
from prefixkv.tokens import token_count

log = logging.getLogger("prefixkv.engine")

__all__ = ["BatchLimits", "BatchRunner", "StepReport"]

IDLE_WAIT = 0.05
"""Seconds the runner sleeps after a step with nothing to feed while a canary check waits
for room (a new request wakes it at once)."""


class BatchRunner:
    """Serves Requests from many callers together on one engine's model and block store."""

    def __init__(
        self,
        engine: Any,
        limits: BatchLimits = DEFAULT_LIMITS,
        on_step: Callable[[StepReport], None] = lambda report: None,
        attention_kernel: str = "auto",
        canary: Canary = NO_CANARY,
    ) -> None:
        """``attention_kernel``: what attends decoding sequences (see :mod:`.kernels`; ValueError
        for an unknown name, NativeUnavailable for ``native`` where it cannot run).
        ``canary``: which served prefixes to recompute and compare (see :mod:`.canary`)."""
        store: BlockStore = engine.cache
        if getattr(store, "pool", None) is None:
            raise TypeError(
                "the batch runner needs a cache with a KV pool (PrefixKVCache, or "
                "NullCache with capacity_bytes)"
            )
        with engine.model_lock:  # the probe switches the model's attention for a moment
            attention.check_supported(engine.model)
        self.engine, self.store, self.limits, self.on_step = engine, store, limits, on_step
        self.canary = canary
        self._padded = padding_of(engine.model)  # rows the linear layers compute per step
        layout = engine.layout
        self.attention_kernel = kernels.attention_kernel(
            attention_kernel,
            int(text_config(engine.model.config).num_attention_heads),
            layout.num_kv_heads,
            layout.dtype,
            engine.device,
        )
        self.model_pass: ModelPass = passes.model_pass(engine, self.attention_kernel)
        """How a step's tokens become logits (:mod:`.passes`): chosen here, once."""
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._running: list[Sequence] = []
        self._cond = threading.Condition()
        self._accepting = True
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.preemptions = 0
        self.steps = 0

    # --- any thread ---------------------------------------------------------------------

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def num_running(self) -> int:
        return len(self._running)

    def submit(self, request: Request, sink: Sink) -> None:
        """Queue ``request``; results go to ``sink``. Raises InvalidRequestError when the
        pool could never hold it, RequestCancelled when the runner stopped accepting."""
        need = self.store.geometry.blocks_for(token_count(request.ids) + request.max_tokens)
        pool = self.store.pool
        assert pool is not None
        if need > pool.num_blocks:
            raise InvalidRequestError(
                f"the prompt plus max_tokens needs {need} KV blocks; the pool holds "
                f"{pool.num_blocks} (raise --cache-bytes or lower max_tokens)",
                "max_tokens",
                "context_length_exceeded",
            )
        seq = Sequence.create(request, sink, self.engine.tokenizer, self.engine.eos_ids)
        with self._cond:
            if not self._accepting:
                raise RequestCancelled("the server is shutting down")
            self._waiting.append(seq)
            self._cond.notify()

    def run_all(self, requests: list[Request]) -> list[Completion]:
        """Serve ``requests`` together on the calling thread (a runner not started, for
        library use); return their Completions in order. Raises the first request's error
        if any failed. Each keeps its own sampling parameters."""
        if self._thread is not None:
            raise RuntimeError("run_all drives the runner itself: do not start() it too")
        sinks = [Collect() for _ in requests]
        for request, sink in zip(requests, sinks, strict=True):
            self.submit(request, sink)
        while self._running or self._waiting:
            self.step()
        return [sink.result() for sink in sinks]

    def start(self, threads: int | None = None) -> None:
        """Run steps on a thread of the runner's own; ``threads``: the cores its torch ops
        use (default: the calling thread's; see :mod:`prefixkv.threads`)."""
        if threads is None:
            threads = current_threads()
        self._thread = threading.Thread(
            target=self._loop, args=(threads,), name="prefixkv-batch", daemon=True
        )
        self._thread.start()

    def drain(self) -> None:
        """Stop accepting; every waiting request is finished as skipped at once."""
        with self._cond:
            self._accepting = False
            drained = list(self._waiting)
            self._waiting.clear()
            self._cond.notify()
        for seq in drained:
            self._end(seq, "skipped", RequestCancelled("the server is shutting down"))

    def cancel_running(self) -> None:
        """Running sequences stop at the next step (their sinks report cancelled)."""
        with self._cond:
            self._stopping = True
            self._cond.notify()

    def wait_idle(self, timeout: float) -> bool:
        """True once nothing waits or runs; False after ``timeout`` seconds."""
        return wait_until(lambda: not (self._running or self._waiting), timeout)

    def stop(self, timeout: float = 10.0) -> None:
        thread, self._thread = self._thread, None
        self.drain()
        self.cancel_running()
        if thread is not None:
            thread.join(timeout)

    # --- the runner thread ----------------------------------------------------------------

    def _loop(self, threads: int) -> None:
        compute_on(threads)
        while True:
            with self._cond:
                while not (self._running or self._waiting or self.canary.busy) and self._accepting:
                    self._cond.wait()
                if not self._accepting and not self._running and not self._waiting:
                    return
            try:
                idle = self.step() is None
            except Exception as exc:  # the model failed: fail the step's sequences, go on
                log.exception("batch step failed")
                for seq in list(self._running):
                    self._end(seq, "failed", exc)
                continue
            if idle:  # at most a canary check waiting for room: do not spin
                with self._cond:  # (checked under the lock: a submit between wakes us)
                    if not (self._running or self._waiting) and self._accepting:
                        self._cond.wait(IDLE_WAIT)

    @property
    def block_size(self) -> int:
        return self.store.block_size

    def step(self) -> StepReport | None:
        """One step: drop cancelled sequences, admit, feed, sample. None when idle."""
        self._drop_cancelled()
        self.canary.tend(self.store)  # before admissions pin the blocks it drops again
        self._admit()
        self._admit_check()
        planned = plan_step(self._running, self.limits.max_batch_tokens, self._padded)
        feeds, preempted = self._allocate(planned)
        note_held(self._running, feeds)
        if not feeds:
            return None
        start = time.perf_counter()
        logits = self._forward(feeds)
        self._advance(feeds, logits)
        self.steps += 1
        report = StepReport(
            len(feeds),
            sum(f.tokens for f in feeds),
            int(logits.shape[0]),
            time.perf_counter() - start,
            len(self._running),
            len(self._waiting),
            preempted,
        )
        self.on_step(report)
        return report

    def _drop_cancelled(self) -> None:
        stopping = self._stopping
        for seq in [s for s in self._running if stopping or s.sink.cancelled]:
            self._end(seq, "stopped", RequestCancelled("the request was cancelled"))
        with self._cond:
            gone = [s for s in self._waiting if s.sink.cancelled]
            for seq in gone:
                self._waiting.remove(seq)
        for seq in gone:
            self._end(seq, "skipped", RequestCancelled("the request was cancelled while queued"))

    def _admit(self) -> None:
        """Open tables for waiting sequences while the limits and the pool allow. A sequence
        whose next block another running sequence is prefilling waits (see ``_in_flight``)."""
        deferred: list[Sequence] = []
        try:
            while len(self._running) < self.limits.max_running:
                with self._cond:
                    if not self._waiting:
                        return
                    seq = self.limits.policy.next(self._waiting, self.store)
                if self._in_flight(seq):
                    deferred.append(seq)
                elif not self._start(seq):
                    deferred.append(seq)
                    return  # the pool is full: admit nobody else before it
        finally:
            with self._cond:
                self._waiting.extendleft(reversed(deferred))

    def _admit_check(self) -> None:
        """Admit the canary's next check when there is spare room: nothing waits and a
        running slot is free (the canary itself waits for free pool blocks)."""
        if self._waiting or len(self._running) >= self.limits.max_running:
            return
        job = self.canary.next_check(self.store)
        if job is None:
            return
        seq = Sequence.create(job.request, job.sink, self.engine.tokenizer, self.engine.eos_ids)
        seq.caching = UNINDEXED
        job.sink.table_of = lambda: seq.table
        if not self._start(seq):
            seq.sink.finish("skipped")

    def _start(self, seq: Sequence) -> bool:
        """Open ``seq``'s table with room for its known tokens; False (nothing held) when
        the pool cannot give that room while others run. A failure ends ``seq``."""
        try:
            table = seq.caching.open(self.store, seq)
            if not self.store.grow(table, len(seq.tokens)) and self._running:
                self.store.close(table)
                return False
        except Exception as exc:
            log.exception("admitting a request failed")
            self._end(seq, "failed", exc)
            return True
        seq.table, seq.computed = table, table.cached_tokens
        if seq.cached_tokens < 0:
            seq.cached_tokens = table.cached_tokens
        self._running.append(seq)
        seq.caching.started(self.store, seq, self.canary)
        return True

    def _in_flight(self, seq: Sequence) -> bool:
        """True when a running sequence of the same namespace is prefilling the block
        ``seq`` would compute next: waiting for it to be indexed (a step or two) saves
        computing it twice, which matters when many clients send one document at once."""
        namespace = seq.request.namespace
        prefilling = [
            r
            for r in self._running
            if r.computed < r.prompt_tokens and r.request.namespace == namespace
        ]
        if not prefilling:  # the common case: no index lookup at all
            return False
        end = self.store.cached(seq.lookup_bytes(), namespace) + self.block_size
        if end >= len(seq.tokens):
            return False
        head = seq.tokens[:end]
        return any(
            r.computed < end <= r.prompt_tokens and r.tokens[:end] == head for r in prefilling
        )

    def _allocate(self, feeds: list[Feed]) -> tuple[list[Feed], int]:
        """Grow every fed sequence's table; preempt the newest sequences where the pool runs
        out. Returns the feeds still valid and how many sequences were preempted."""
        kept: list[Feed] = []
        preempted = 0
        for feed in feeds:
            seq = feed.seq
            while seq in self._running and seq.table is not None:
                if self.store.grow(seq.table, seq.computed + feed.tokens):
                    kept.append(feed)
                    break
                victim = self._running[-1]
                if victim is seq and len(self._running) == 1:
                    error = MemoryError("the KV pool cannot hold this request even alone")
                    self._end(seq, "failed", error)
                    break
                self._preempt(victim)
                preempted += 1
        alive = {id(s) for s in self._running}
        return [f for f in kept if id(f.seq) in alive], preempted

    def _preempt(self, seq: Sequence) -> None:
        assert seq.table is not None
        seq.caching.commit(self.store, seq)
        self.store.close(seq.table)
        seq.table, seq.computed = None, 0
        self._running.remove(seq)
        self.preemptions += 1
        with self._cond:
            self._waiting.appendleft(seq)

    def _forward(self, feeds: list[Feed]) -> torch.Tensor:
        """One model pass over every feed; ``[sampled feeds, vocab]`` float logits for the
        feeds that reach their sequence's last known token."""
        device = self.engine.device
        input_ids, positions = input_of(feeds, device)
        layout = layout_of(feeds, self.block_size, device, self.attention_kernel)
        rows, end = [], 0
        for seq, count in feeds:
            end += count
            if count == seq.pending:
                rows.append(end - 1)
        pool = self.store.pool
        assert pool is not None
        keep = torch.tensor(rows, dtype=torch.long, device=device)
        return self.model_pass(input_ids, positions, pool.data, layout, keep)

    def _advance(self, feeds: list[Feed], logits: torch.Tensor) -> None:
        row = 0
        for seq, count in feeds:
            sample = count == seq.pending
            seq.computed += count
            seq.caching.commit(self.store, seq)
            if not sample:
                continue
            seq.accept(logits[row])
            row += 1
            if seq.decoding.done:
                seq.sink.deliver(seq.completion())
                self._end(seq, "completed")

    def _end(self, seq: Sequence, outcome: Any, error: BaseException | None = None) -> None:
        if seq.table is not None:
            self.store.close(seq.table)
            seq.table = None
        if seq in self._running:
            self._running.remove(seq)
        seq.sink.finish(outcome, error)

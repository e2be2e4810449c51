"""The exactness canary: proof, in production, that what the cache serves is what the model
would compute.

A sampled fraction of requests admitted with a cached prefix (``rate``) gets a check: the
blocks it was served are held (pinned, so they stay as they were), and when the runner has
spare room (nothing waiting, a free running slot, room in the pool for the whole prefix, so
the check delays no queued request; like a request, it may evict the coldest cached blocks) the prefix is computed again
*without* the cache, into private blocks, by the same runner in its ordinary steps: the same
kernels, whose every output is one fixed summation order whatever the batch (see
:mod:`prefixkv.kernels`), so an exact cache gives the same KV bit for bit. Then the two are
compared, block by block, layer by layer. A difference is a cache that served something
else than the model's KV (a corrupted pool block, a bug in reuse): it is counted, logged
with the prefix's block names and the first differing layer and token position, and the
bad block and everything after or below it are dropped from the index so that later
requests compute them afresh (retried each step while running requests still hold them).

Cost: the recomputed prefix tokens, at most ``rate`` times the prefill the cache saved,
only in spare room; ``CanaryCounts.recomputed_tokens`` says how many.
"""

from __future__ import annotations

import collections
import logging
import random
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch

from prefixkv.cache.protocol import BlockStore
from prefixkv.cache.table import BlockTable
from prefixkv.engine.request import Completion, Request, SamplingParams
from prefixkv.engine.role import Delivery, Outcome
from prefixkv.index import PinnedBlocksError
from prefixkv.tokens import TokenBytes

log = logging.getLogger("prefixkv.canary")

BlockNames = Callable[[TokenBytes, Hashable, int], list[str]]
"""The names of the first ``n`` blocks of a prefix in a namespace (hex), for the log."""


class CanaryCounts(NamedTuple):
    """What the canary did so far."""

    checks: int
    """Prefixes recomputed and compared."""
    mismatches: int
    """Checks whose KV differed from the cached blocks."""
    skipped: int
    """Sampled checks not run: their blocks were evicted first, the queue was full, or the
    check was stopped (shutdown, preemption)."""
    recomputed_tokens: int
    """Prompt tokens computed again by checks (their cost)."""
    discarded_blocks: int
    """Blocks dropped from the index after mismatches."""


@dataclass(frozen=True)
class Mismatch:
    """Where a check found the cached KV differing from the recomputed one."""

    block: int
    """Index of the first differing block in the prefix."""
    layer: int
    position: int
    """Token position (in the prompt) of the first difference in that block and layer."""


class Canary(Protocol):
    """The runner's canary: told of every admission, asked for a check to run when there
    is room. Called on the runner thread only (``counts`` from any thread)."""

    def consider(self, store: BlockStore, table: BlockTable, tokens: TokenBytes) -> None:
        """A sequence was admitted with ``table`` (its cached prefix) for ``tokens``; maybe
        sample it for a check (holding its cached blocks)."""
        ...

    def next_check(self, store: BlockStore) -> CheckJob | None:
        """A check to admit now (the runner has spare room); None if there is none, one is
        running, or the pool cannot hold it without evicting."""
        ...

    def tend(self, store: BlockStore) -> None:
        """Retry dropping blocks found bad that were held at the time. Once per step."""
        ...

    @property
    def busy(self) -> bool:
        """A check is pending or running, or bad blocks wait to be dropped (the runner keeps
        stepping while so)."""
        ...

    def counts(self) -> CanaryCounts: ...


class NoCanary:
    """Checks nothing (``--canary-rate 0``)."""

    def consider(self, store: BlockStore, table: BlockTable, tokens: TokenBytes) -> None:
        return None

    def next_check(self, store: BlockStore) -> CheckJob | None:
        return None

    def tend(self, store: BlockStore) -> None:
        return None

    @property
    def busy(self) -> bool:
        return False

    def counts(self) -> CanaryCounts:
        return CanaryCounts(0, 0, 0, 0, 0)


NO_CANARY = NoCanary()


def first_mismatch(data: torch.Tensor, cached: list[int], fresh: list[int]) -> Mismatch | None:
    """The first block, layer and offset where pool blocks ``cached`` and ``fresh`` differ
    in their bytes (``data``: ``[layers, 2, kv_heads, blocks, block_size, head_dim]``), or
    None when every byte is equal."""
    block_size = data.shape[4]
    for i, (a, b) in enumerate(zip(cached, fresh, strict=True)):
        x, y = data[:, :, :, a], data[:, :, :, b]  # [layers, 2, heads, block_size, head_dim]
        if torch.equal(x.contiguous().view(torch.uint8), y.contiguous().view(torch.uint8)):
            continue
        differs = (x.contiguous().view(torch.uint8) != y.contiguous().view(torch.uint8)).flatten(
            1, 2
        )  # [layers, 2 * heads, block_size, head_dim * itemsize]
        layer = int(differs.flatten(1).any(1).nonzero()[0])
        offset = int(differs[layer].any(2).any(0).nonzero()[0])
        return Mismatch(i, layer, i * block_size + offset)
    return None


@dataclass(eq=False)
class Check:
    """One sampled prefix: the served blocks (``held``, pinned until the check ends)."""

    held: BlockTable
    tokens: TokenBytes
    """The prefix: exactly ``held.cached_tokens`` tokens."""
    sampled: float
    """``time.monotonic()`` when sampled (a check that finds no room in time is dropped)."""


class CheckJob(NamedTuple):
    """A check for the runner to admit: the prefix as a request (one token to generate,
    greedy) and the sink that compares when it completes."""

    request: Request
    sink: CheckSink


class SampledCanary:
    """Checks each admission with a cached prefix with probability ``rate`` (a seeded
    stream), at most ``max_pending`` waiting at once (each pins its blocks), one running."""

    def __init__(
        self,
        rate: float,
        names: BlockNames,
        seed: int = 0,
        max_pending: int = 2,
        max_wait: float = 60.0,
    ) -> None:
        if not 0.0 < rate <= 1.0:
            raise ValueError(f"a canary rate must be in (0, 1], got {rate!r}")
        self.rate, self.names, self.max_pending = rate, names, max_pending
        self.max_wait = max_wait
        self._random = random.Random(seed)
        self._pending: collections.deque[Check] = collections.deque()
        self._running: CheckSink | None = None
        self._bad: list[tuple[TokenBytes, int, Hashable]] = []  # prefix, block, namespace
        self._lock = threading.Lock()
        self._counts = CanaryCounts(0, 0, 0, 0, 0)

    def consider(self, store: BlockStore, table: BlockTable, tokens: TokenBytes) -> None:
        if table.cached_tokens == 0 or self._random.random() >= self.rate:
            return
        if len(self._pending) >= self.max_pending:
            self._count(skipped=1)
            return
        prefix = TokenBytes(tokens[: table.cached_tokens * 4])
        held = store.hold(prefix, table.namespace)  # all of it: ``table`` pins it too
        self._pending.append(Check(held, prefix, time.monotonic()))

    def next_check(self, store: BlockStore) -> CheckJob | None:
        while self._pending and time.monotonic() - self._pending[0].sampled > self.max_wait:
            store.close(self._pending.popleft().held)  # no room for it in time: give it up
            self._count(skipped=1)
        if self._running is not None or not self._pending:
            return None
        check = self._pending[0]
        if store.available_blocks() < len(check.held.blocks):
            return None  # pinned by running requests: wait for room
        self._pending.popleft()
        self._running = CheckSink(self, store, check)
        request = Request(check.tokens, SamplingParams(max_tokens=1), check.held.namespace)
        return CheckJob(request, self._running)

    def tend(self, store: BlockStore) -> None:
        still: list[tuple[TokenBytes, int, Hashable]] = []
        for prefix, block, namespace in self._bad:
            try:
                self._count(discarded_blocks=store.discard(prefix, block, namespace))
            except PinnedBlocksError:
                still.append((prefix, block, namespace))
        self._bad = still

    @property
    def busy(self) -> bool:
        return bool(self._pending or self._bad) or self._running is not None

    def counts(self) -> CanaryCounts:
        with self._lock:
            return self._counts

    # --- the running check's sink reports here ------------------------------------------

    def _count(self, **more: int) -> None:
        with self._lock:
            c = self._counts
            self._counts = c._replace(**{k: getattr(c, k) + v for k, v in more.items()})

    def _ended(self, store: BlockStore, check: Check, found: Mismatch | None, ran: bool) -> None:
        count = len(check.held.blocks)
        store.close(check.held)
        self._running = None
        if not ran:
            self._count(skipped=1)
            return
        self._count(checks=1, recomputed_tokens=len(check.tokens) // 4)
        if found is None:
            return
        self._count(mismatches=1)
        namespace = check.held.namespace
        names = self.names(check.tokens, namespace, count)
        log.error(
            "exactness canary: cached KV differs from recomputed KV at block %d (layer %d, "
            "token %d) of a %d-token prefix; blocks %s; dropping block %d and after from the "
            "cache",
            found.block,
            found.layer,
            found.position,
            len(check.tokens) // 4,
            ", ".join(names),
            found.block,
        )
        self._bad.append((check.tokens, found.block, namespace))
        self.tend(store)


class CheckSink:
    """The sink of a running check (implements the runner's Sink): ignores the text; at the
    completion, compares the check's fresh blocks with the held ones; at the end, reports."""

    cancelled = False

    def __init__(self, canary: SampledCanary, store: BlockStore, check: Check) -> None:
        self._canary, self._store, self._check = canary, store, check
        # The check sequence's table now (a preempted check resumes on a new one): set by
        # the runner at admission.
        self.table_of: Callable[[], BlockTable | None] = lambda: None
        self._found: Mismatch | None = None
        self._compared = False

    def deliver(self, item: Delivery) -> None:
        table = self.table_of()
        held = self._check.held.blocks
        if not isinstance(item, Completion) or table is None or len(table.blocks) < len(held):
            return
        pool = self._store.pool
        assert pool is not None
        try:
            self._found = first_mismatch(pool.data, held, table.blocks[: len(held)])
            self._compared = True
        except Exception:  # a check must never fail the step it runs in: count it skipped
            log.exception("exactness canary: the comparison failed; the check is skipped")

    def finish(self, outcome: Outcome, error: BaseException | None = None) -> None:
        self._canary._ended(self._store, self._check, self._found, self._compared)

"""The connector's scheduler half: how much of a prompt the tiers hold past vLLM's own
cache, and each step's plan of blocks to load and to save.

Only a prompt's full blocks are stored, each under its prefixkv name (the chain of the
prompt's tokens from a root naming the model fingerprint, block size and the request's
``cache_salt``), so two replicas or two lifetimes of one name the same prefix alike.
A load is synchronous (the worker fills the blocks before the step's forward pass), so
vLLM never waits for the connector; a save is planned once the forward pass that computes
a block is scheduled, and written by the worker right after it.

vLLM's contract kept here: ``offer`` has no effect beyond remembering its answer;
at least one prompt token is always left to compute; after a failed load vLLM rewinds the
request's computed tokens, and the saves rewind with them (blocks past the failure are
written again once recomputed; names already held are skipped by the tiers).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prefixkv.integrations.vllm.plan import BlockRun, StepPlan
from prefixkv.tiers.naming import BlockNamer
from prefixkv.tiers.protocol import Tier
from prefixkv.tokens import TOKEN_BYTES, as_token_bytes


@dataclass
class _Tracked:
    """One running request's prompt and vLLM blocks. Mutable bookkeeping, owned here."""

    root: bytes
    names: list[bytes]
    """Names of the prompt's full blocks."""
    tokens: bytes
    block_ids: list[int] = field(default_factory=list)
    saved: int = 0
    """Blocks ``0 .. saved - 1`` are in the store or planned to be."""


def supported(request: Any) -> bool:
    """Plain text prompts only: a LoRA adapter or multimodal inputs change the KV without
    changing the token ids, which is all a name covers."""
    return (
        getattr(request, "lora_request", None) is None
        and not getattr(request, "mm_features", None)
        and bool(request.prompt_token_ids)
    )


class SchedulerSide:
    """Owned by vLLM's scheduler thread: not thread-safe."""

    def __init__(self, namer: BlockNamer, tiers: Sequence[Tier]) -> None:
        self.namer = namer
        self.block_size = namer.block_size
        self.tiers = tuple(tiers)
        self._offers: dict[str, tuple[int, int]] = {}  # request -> (first block, blocks)
        self._loads: dict[str, tuple[int, int]] = {}
        self._tracked: dict[str, _Tracked] = {}

    def offer(self, request: Any, num_computed_tokens: int) -> int:
        """Tokens past ``num_computed_tokens`` the tiers hold (whole blocks, in one
        leading run; 0 when none)."""
        if not supported(request):
            return 0
        tracked = self._track(request)  # the plan needs it once vLLM schedules it
        first = num_computed_tokens // self.block_size
        usable = (len(request.prompt_token_ids) - 1) // self.block_size
        if usable <= first or num_computed_tokens % self.block_size:
            return 0
        held = self._held(tracked.names[first:usable])
        if not held:
            return 0
        self._offers[request.request_id] = (first, held)
        return (first + held) * self.block_size - num_computed_tokens

    def _held(self, names: Sequence[bytes]) -> int:
        """How many of ``names``, from the first, some tier holds."""
        held = [False] * len(names)
        for tier in self.tiers:
            notice = getattr(tier, "notice", None)  # the disk tier: see files others wrote
            found = notice(names) if notice is not None else tier.holds(names)
            held = [a or b for a, b in zip(held, found, strict=True)]
        return next((i for i, h in enumerate(held) if not h), len(held))

    def allocated(self, request_id: str, num_external_tokens: int) -> None:
        """vLLM took ``num_external_tokens`` of the offer: load them this step."""
        offer = self._offers.pop(request_id, None)
        if offer is not None and num_external_tokens > 0:
            self._loads[request_id] = (offer[0], num_external_tokens // self.block_size)

    def _track(self, request: Any) -> _Tracked:
        found = self._tracked.get(request.request_id)
        if found is None:
            tokens = as_token_bytes(request.prompt_token_ids)
            full = len(request.prompt_token_ids) // self.block_size
            root = self.namer.root(namespace_of(request))
            names = self.namer.extend(root, bytes(tokens), 0, full)
            found = _Tracked(root, names, bytes(tokens)[: full * self.block_size * TOKEN_BYTES])
            self._tracked[request.request_id] = found
        return found

    def plan(self, output: Any) -> StepPlan:
        """The step's plan for vLLM's ``SchedulerOutput`` (requests ``offer`` never saw, or
        turned down as unsupported, take no part)."""
        loads: list[BlockRun] = []
        scheduled: list[tuple[str, int]] = []
        for new in output.scheduled_new_reqs:
            tracked = self._tracked.get(new.req_id)
            if tracked is None:
                continue
            tracked.block_ids = list(new.block_ids[0])
            tracked.saved = new.num_computed_tokens // self.block_size
            scheduled.append((new.req_id, new.num_computed_tokens))
        cached = output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            tracked = self._tracked.get(req_id)
            if tracked is None:
                continue
            added = cached.new_block_ids[i]
            if req_id in cached.resumed_req_ids and added is not None:
                tracked.block_ids = list(added[0])
            elif added is not None:
                tracked.block_ids += added[0]
            computed = cached.num_computed_tokens[i]
            tracked.saved = min(tracked.saved, computed // self.block_size)  # a rewind
            scheduled.append((req_id, computed))
        for req_id, _ in scheduled:
            if req_id in self._loads:
                first, count = self._loads.pop(req_id)
                loads.append(self._run(req_id, first, first + count))
        self._loads.clear()  # requests vLLM did not schedule after all load nothing
        saves = list(self._saves(scheduled, output.num_scheduled_tokens))
        self.forget(output.finished_req_ids)
        return StepPlan(tuple(loads), tuple(saves))

    def _saves(
        self, scheduled: list[tuple[str, int]], counts: dict[str, int]
    ) -> Iterable[BlockRun]:
        for req_id, computed in scheduled:
            tracked = self._tracked[req_id]
            done = min((computed + counts.get(req_id, 0)) // self.block_size, len(tracked.names))
            done = min(done, len(tracked.block_ids))
            if done > tracked.saved:
                yield self._run(req_id, tracked.saved, done)
                tracked.saved = done

    def _run(self, req_id: str, start: int, stop: int) -> BlockRun:
        tracked = self._tracked[req_id]
        width = self.block_size * TOKEN_BYTES
        return BlockRun(
            req_id, start, tracked.root if start == 0 else tracked.names[start - 1],
            tuple(tracked.names[start:stop]), tracked.tokens[start * width : stop * width],
            tuple(tracked.block_ids[start:stop]),
        )  # fmt: skip

    def forget(self, request_ids: Iterable[str]) -> None:
        """Drop finished requests' bookkeeping."""
        for req_id in request_ids:
            self._tracked.pop(req_id, None)
            self._offers.pop(req_id, None)
            self._loads.pop(req_id, None)


def namespace_of(request: Any) -> Hashable:
    """The request's ``cache_salt`` (vLLM's own isolation of prefix caches): prompts under
    different salts share nothing, in vLLM's cache and in the tiers."""
    salt = getattr(request, "cache_salt", None)
    return None if salt is None else ("vllm-cache-salt", str(salt))

"""Shared-prefix decoding: sequences whose contexts start with the same run of blocks attend
together, and that run is read once per layer instead of once per sequence.

Many requests about one document hold the same cached blocks (the index hands every match
the same block ids), so their block tables begin alike. The shared blocks need not be
consecutive in the pool: a document prefilled in chunks, while other requests took blocks
between them, lies in several runs. For a group of B decoding sequences whose contexts begin
with the same runs of slots:

- the shared runs: per run, one matmul of all B queries against its keys, one against its
  values (the shared context is read once, not B times);
- the rest of each context (its own blocks, at most ``REST_MAX`` tokens): gathered into a
  padded ``[B, R]`` batch, attended with one batched matmul under a padding mask;
- one softmax over the joined scores of both parts (they are small: ``[B, heads, L + R]``),
  whose shares then weight each part's values, so the result equals attention over the whole
  context up to float rounding.

Sequences that share nothing, or whose rest is long (copying it would cost more than it
saves), are attended one by one (:func:`~prefixkv.engine.batch.attention.attend`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from prefixkv.engine.batch.attention import SeqSpan
    from prefixkv.engine.batch.band import Band

REST_MAX = 128
"""Most context tokens past the shared run that a grouped sequence may have: the rest is
copied each step (``prefixkv bench attention`` puts the per-call cost at ~50 us, the copy at
~1.5 KB per token and layer for SmolLM2)."""


@dataclass(frozen=True)
class SharedPrefix:
    """Decoding sequences whose contexts start with the same ``runs`` of slots."""

    runs: tuple[tuple[int, int], ...]
    """``(first_slot, num_slots)`` ranges of the flat pool layer, in token order."""
    rows: torch.Tensor
    """``[B]`` int64: each member's query row in the packed step."""
    rest: torch.Tensor
    """``[B, R]`` int64: each member's later context slots, padded with the first shared slot."""
    valid: torch.Tensor
    """``[B, R]`` bool: which ``rest`` entries are real."""


def group_spans(
    spans: Seq[SeqSpan], device: torch.device
) -> tuple[tuple[SharedPrefix, ...], tuple[SeqSpan, ...]]:
    """Decoding spans as groups sharing the longest common runs (two or more members, each
    with at most ``REST_MAX`` tokens past them); every other span alone. Pure bookkeeping,
    once per step (not per layer)."""
    found, alone = partition([span for span in spans if span.count == 1])
    prefill = tuple(span for span in spans if span.count != 1)
    return tuple(_group(runs, members, device) for runs, members in found), prefill + alone


Runs = tuple[tuple[int, int], ...]


def partition(
    decoding: Seq[SeqSpan],
) -> tuple[list[tuple[Runs, list[SeqSpan]]], tuple[SeqSpan, ...]]:
    """Decoding spans as groups (common runs, members: two or more, each with at most
    ``REST_MAX`` tokens past the runs), and those that share nothing worth sharing."""
    found: list[tuple[Runs, list[SeqSpan]]] = []
    alone: list[SeqSpan] = []
    _partition(list(decoding), found, alone)
    return found, tuple(alone)


class CascadeKernel:
    """The ``torch`` attention kernel (see :mod:`.kernels`): decoding groups sharing a
    prefix attend together (:func:`attend_shared`), every other span one by one."""

    name = "torch"

    def plan(
        self, spans: Seq[SeqSpan], device: torch.device
    ) -> tuple[CascadePlan, tuple[SeqSpan, ...]]:
        shared, others = group_spans(spans, device)
        return CascadePlan(shared), others

    def plan_band(
        self, spans: Seq[SeqSpan], band: Band, device: torch.device
    ) -> tuple[CascadePlan, tuple[SeqSpan, ...]]:
        """Nothing: every span is left to :func:`.band.attend_band`."""
        return CascadePlan(), tuple(spans)


@dataclass(frozen=True)
class CascadePlan:
    """The decoding groups of one step (an AttentionPlan)."""

    groups: tuple[SharedPrefix, ...] = ()

    def store(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        new_keys: torch.Tensor,
        new_values: torch.Tensor,
        slots: torch.Tensor,
    ) -> None:
        keys.index_copy_(1, slots, new_keys)
        values.index_copy_(1, slots, new_values)

    def attend(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        out: torch.Tensor,
        scale: float,
    ) -> None:
        for group in self.groups:
            out.index_copy_(0, group.rows, attend_shared(query, keys, values, group, scale))


def _partition(
    members: list[SeqSpan],
    found: list[tuple[tuple[tuple[int, int], ...], list[SeqSpan]]],
    alone: list[SeqSpan],
) -> None:
    """Split ``members`` where their contexts part, like a trie over their slots: a set
    whose common runs leave every member a short rest is a group, else each branch (the slot
    after the common runs) is split again. Each level's common runs are longer than its
    parent's, so the depth is bounded by the contexts' runs."""
    if len(members) < 2:
        alone += members
        return
    runs = common_runs(members)
    length = _length(runs)
    fits = [m for m in members if m.context - length <= REST_MAX]
    if runs and len(fits) == len(members):
        found.append((runs, members))
        return
    branches: dict[int, list[SeqSpan]] = defaultdict(list)
    for m in members:
        branches[_slot_at(m.runs, length)].append(m)
    if len(branches) == 1:  # the shortest context stopped the runs: split the long ones off
        rest = [m for m in members if m not in fits]
        if not runs or not rest:  # only for one-token contexts, which never decode
            alone += members
            return
        if len(fits) > 1:
            found.append((runs, fits))
        else:
            alone += fits
        _partition(rest, found, alone)
        return
    singles = [m for branch in branches.values() if len(branch) == 1 for m in branch]
    if runs and len([m for m in singles if m in fits]) >= 2:  # share this level's runs
        found.append((runs, [m for m in singles if m in fits]))
        alone += [m for m in singles if m not in fits]
    else:
        alone += singles
    for branch in branches.values():
        if len(branch) > 1:
            _partition(branch, found, alone)


def _slot_at(runs: tuple[tuple[int, int], ...], position: int) -> int:
    """The pool slot of the context token at ``position``."""
    for first, count in runs:
        if position < count:
            return first + position
        position -= count
    raise IndexError("position past the context")


def common_runs(members: Seq[SeqSpan]) -> tuple[tuple[int, int], ...]:
    """The longest run sequence every member's context starts with, leaving each member at
    least its own last token: equal runs while all agree, then the shortest of the first
    runs that differ in length only (after it, their contexts continue in different places)."""
    limit = min(m.context for m in members) - 1
    common: list[tuple[int, int]] = []
    total = 0
    for j, (first, _) in enumerate(members[0].runs):
        if total >= limit or any(len(m.runs) <= j or m.runs[j][0] != first for m in members):
            break
        lengths = {m.runs[j][1] for m in members}
        take = min(min(lengths), limit - total)
        common.append((first, take))
        total += take
        if len(lengths) > 1:
            break
    return tuple(common)


def _length(runs: tuple[tuple[int, int], ...]) -> int:
    return sum(count for _, count in runs)


def _group(
    runs: tuple[tuple[int, int], ...], members: list[SeqSpan], device: torch.device
) -> SharedPrefix:
    length, pad = _length(runs), runs[0][0]
    rests = [slots_of(m.runs)[length:] for m in members]
    width = max(len(r) for r in rests)
    rest = np.full((len(members), width), pad, dtype=np.int64)
    valid = np.zeros((len(members), width), dtype=bool)
    for i, slots in enumerate(rests):
        rest[i, : len(slots)] = slots
        valid[i, : len(slots)] = True
    return SharedPrefix(
        runs,
        torch.tensor([m.start for m in members], dtype=torch.long, device=device),
        torch.from_numpy(rest).to(device),
        torch.from_numpy(valid).to(device),
    )


def slots_of(runs: tuple[tuple[int, int], ...]) -> np.ndarray:
    """The pool slots of ``runs``, in token order (int64; empty for no runs)."""
    if not runs:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(a, a + c, dtype=np.int64) for a, c in runs])


def attend_shared(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    group: SharedPrefix,
    scale: float,
) -> torch.Tensor:
    """``query``: ``[heads, T, dim]`` (the step's queries); ``keys``/``values``: a pool
    layer ``[kv_heads, slots, dim]``. Returns ``[B, heads, dim]`` for the group's rows.

    The scores of every shared run and of each member's rest are joined for one softmax
    (``[kv_heads, B, per_kv, L + R]``, small), then each part's values are weighted by its
    share of it: one fused softmax instead of a max/sum merge per part (about 20% fewer
    milliseconds per layer here, most of them in small-op overhead)."""
    kv_heads, dim = keys.shape[0], keys.shape[2]
    size, per_kv = group.rows.numel(), query.shape[0] // kv_heads
    # Head h reads kv head h // per_kv: [kv_heads, B, per_kv, dim], contiguous, pre-scaled.
    picked = query.index_select(1, group.rows).view(kv_heads, per_kv, size, dim).transpose(1, 2)
    q = query.new_empty(kv_heads, size, per_kv, dim)
    torch.mul(picked, scale, out=q)
    flat_q = q.view(kv_heads, size * per_kv, dim)
    scores = [
        torch.matmul(flat_q, keys[:, a : a + n].transpose(1, 2)).view(kv_heads, size, per_kv, n)
        for a, n in group.runs
    ]
    # The rest: [kv_heads, B, R, dim] gathered, masked where padded.
    width = group.rest.shape[1]
    rest_k = keys.index_select(1, group.rest.view(-1)).view(kv_heads, size, width, dim)
    rest_v = values.index_select(1, group.rest.view(-1)).view(kv_heads, size, width, dim)
    scores_r = torch.matmul(q, rest_k.transpose(-1, -2))  # [kv_heads, B, per_kv, R]
    scores_r.masked_fill_(~group.valid[None, :, None, :], float("-inf"))
    scores.append(scores_r)
    weights = torch.softmax(torch.cat(scores, -1), -1)  # [kv_heads, B, per_kv, L + R]
    shared = weights.shape[-1] - width
    out = torch.matmul(weights[..., shared:], rest_v)  # [kv_heads, B, per_kv, dim]
    flat_out = out.view(kv_heads, size * per_kv, dim)
    offset = 0
    for a, n in group.runs:  # each run's values weighted in place, no KV copied
        part = weights[..., offset : offset + n].reshape(kv_heads, size * per_kv, n)
        flat_out.baddbmm_(part, values[:, a : a + n])
        offset += n
    return out.permute(1, 0, 2, 3).reshape(size, kv_heads * per_kv, dim)

"""Shared-prefix decoding: sequences whose contexts start with the same run of blocks attend
together, and that run is read once per layer instead of once per sequence.

Many requests about one document hold the same cached blocks (the index hands every match
the same block ids), so their contexts begin with the same run of pool slots. For a group of
B decoding sequences sharing a run of ``length`` slots:

- the shared run: one matmul of all B queries against its keys, one against its values
  (the run is read once, not B times);
- the rest of each context (its own blocks, at most ``REST_MAX`` tokens): gathered into a
  padded ``[B, R]`` batch, attended with one batched matmul under a padding mask;
- the two parts are merged exactly through their running maxima and sums (the softmax over
  the union), so the result equals attention over the whole context up to float rounding.

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

REST_MAX = 128
"""Most context tokens past the shared run that a grouped sequence may have: the rest is
copied each step (``prefixkv bench attention`` puts the per-call cost at ~50 us, the copy at
~1.5 KB per token and layer for SmolLM2)."""


@dataclass(frozen=True)
class SharedPrefix:
    """Decoding sequences whose contexts start with the slots ``[start, start + length)``."""

    start: int
    length: int
    rows: torch.Tensor
    """``[B]`` int64: each member's query row in the packed step."""
    rest: torch.Tensor
    """``[B, R]`` int64: each member's later context slots, padded with ``start``."""
    valid: torch.Tensor
    """``[B, R]`` bool: which ``rest`` entries are real."""


def group_spans(
    spans: Seq[SeqSpan], device: torch.device
) -> tuple[tuple[SharedPrefix, ...], tuple[SeqSpan, ...]]:
    """Decoding spans that share a first run (two or more, each with a short rest) as groups;
    every other span alone. Pure bookkeeping, once per step (not per layer)."""
    by_start: dict[int, list[SeqSpan]] = defaultdict(list)
    alone: list[SeqSpan] = []
    for span in spans:
        (by_start[span.runs[0][0]] if span.count == 1 else alone).append(span)
    shared = []
    for start, members in by_start.items():
        # The common part: the shortest first run, leaving every member at least its own token.
        length = min(min(m.runs[0][1] for m in members), min(m.context for m in members) - 1)
        fits = [m for m in members if m.context - length <= REST_MAX]
        if len(fits) < 2 or length < 1:
            alone += members
            continue
        alone += [m for m in members if m.context - length > REST_MAX]
        shared.append(_group(start, length, fits, device))
    return tuple(shared), tuple(alone)


def _group(start: int, length: int, members: list[SeqSpan], device: torch.device) -> SharedPrefix:
    rests = [_slots(m.runs)[length:] for m in members]
    width = max(len(r) for r in rests)
    rest = np.full((len(members), width), start, dtype=np.int64)
    valid = np.zeros((len(members), width), dtype=bool)
    for i, slots in enumerate(rests):
        rest[i, : len(slots)] = slots
        valid[i, : len(slots)] = True
    return SharedPrefix(
        start,
        length,
        torch.tensor([m.start for m in members], dtype=torch.long, device=device),
        torch.from_numpy(rest).to(device),
        torch.from_numpy(valid).to(device),
    )


def _slots(runs: tuple[tuple[int, int], ...]) -> np.ndarray:
    return np.concatenate([np.arange(a, a + c, dtype=np.int64) for a, c in runs])


def attend_shared(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    group: SharedPrefix,
    scale: float,
) -> torch.Tensor:
    """``query``: ``[heads, T, dim]`` (the step's queries); ``keys``/``values``: a pool
    layer ``[kv_heads, slots, dim]``. Returns ``[B, heads, dim]`` for the group's rows."""
    kv_heads, dim = keys.shape[0], keys.shape[2]
    size, per_kv = group.rows.numel(), query.shape[0] // kv_heads
    # Head h reads kv head h // per_kv: [kv_heads, B, per_kv, dim], pre-scaled.
    q = query.index_select(1, group.rows).view(kv_heads, per_kv, size, dim).transpose(1, 2)
    q = q * scale
    shared_k = keys[:, group.start : group.start + group.length]  # [kv_heads, L, dim]
    shared_v = values[:, group.start : group.start + group.length]
    scores = torch.matmul(q.reshape(kv_heads, size * per_kv, dim), shared_k.transpose(1, 2))
    top_s = scores.amax(-1, keepdim=True)
    weights = scores.sub_(top_s).exp_()
    sum_s = weights.sum(-1, keepdim=True)
    out_s = torch.matmul(weights, shared_v).view(kv_heads, size, per_kv, dim)
    # The rest: [kv_heads, B, R, dim] gathered, masked where padded.
    width = group.rest.shape[1]
    rest_k = keys.index_select(1, group.rest.view(-1)).view(kv_heads, size, width, dim)
    rest_v = values.index_select(1, group.rest.view(-1)).view(kv_heads, size, width, dim)
    scores_r = torch.matmul(q, rest_k.transpose(-1, -2))  # [kv_heads, B, per_kv, R]
    scores_r.masked_fill_(~group.valid[None, :, None, :], float("-inf"))
    top_r = scores_r.amax(-1, keepdim=True)
    weights_r = scores_r.sub_(top_r).exp_()
    sum_r = weights_r.sum(-1, keepdim=True)
    out_r = torch.matmul(weights_r, rest_v)
    # Merge: the softmax over both parts, from each part's max and sum.
    top_s, sum_s = top_s.view(kv_heads, size, per_kv, 1), sum_s.view(kv_heads, size, per_kv, 1)
    top = torch.maximum(top_s, top_r)
    scale_s, scale_r = torch.exp(top_s - top), torch.exp(top_r - top)
    merged = (out_s * scale_s + out_r * scale_r) / (sum_s * scale_s + sum_r * scale_r)
    return merged.permute(1, 0, 2, 3).reshape(size, kv_heads * per_kv, dim)

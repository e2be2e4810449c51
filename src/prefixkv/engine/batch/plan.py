"""A step's plan: which tokens of which sequences one forward pass feeds (pure, no model).

Every running sequence that has decoded gets its one token first, so no decode waits behind a
prefill; prompts being prefilled then share the rest of the ``max_batch_tokens`` budget, the
shortest remaining first, each a chunk of at most what is left (chunked prefill). A step that
completes a prompt (its first token comes at the step's end) takes no partial chunk of
another prompt, which would only delay that first token, unless that prompt has been left
out ``MAX_HELD`` steps in a row (so a stream of short prompts cannot starve a long one), or
the chunk fits in the rows the linear layers pad the step to anyway (``padded``: oneDNN runs
a 200-token step as 256 rows, so 56 tokens of another prompt cost only their attention). The
layout maps each fed token to its pool slot and each sequence to the runs of consecutive
blocks holding its context.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as Seq
from typing import NamedTuple

import numpy as np
import torch

from prefixkv.engine.batch.attention import SeqSpan, StepLayout
from prefixkv.engine.batch.kernels import AttentionKernel
from prefixkv.engine.batch.sequence import Sequence
from prefixkv.engine.linear import unpadded

MAX_HELD = 2
"""Steps in a row a partial prefill chunk may be left out of steps that give a first token.
On SmolLM2 here a 512-token chunk costs ~0.8 s: without the rule, a request whose prompt
was cached waited for another's chunk in its first step."""


class Feed(NamedTuple):
    """``tokens`` tokens of ``seq`` from its ``computed``-th."""

    seq: Sequence
    tokens: int


def plan_step(
    running: Seq[Sequence], max_batch_tokens: int, padded: Callable[[int], int] = unpadded
) -> list[Feed]:
    """Decode tokens first (one per sequence that has all its prompt computed), then prefill
    chunks while budget remains, the shortest remaining prefill first: a request whose prefix
    was cached (a few tokens left) gets its first token at the next step, never after another
    request's long prefill; once a chunk completes a prompt, partial chunks join only for
    prompts held back ``MAX_HELD`` steps, or within the padding: ``padded(n)`` is the rows a
    step of ``n`` tokens costs (see the module docstring). Every sequence with a decode token
    is fed whatever the budget (a budget below the running count would starve them). Pure:
    the runner updates ``held`` (:func:`note_held`)."""
    feeds = [Feed(s, 1) for s in running if s.pending == 1]
    budget = max_batch_tokens - len(feeds)
    completes = False
    held_back: list[Sequence] = []
    for seq in sorted((s for s in running if s.pending > 1), key=lambda s: s.pending):
        if budget <= 0:
            break
        count = min(seq.pending, budget)
        if completes and count < seq.pending and seq.held < MAX_HELD:
            held_back.append(seq)
            continue
        feeds.append(Feed(seq, count))
        budget -= count
        completes = completes or count == seq.pending
    total = max_batch_tokens - budget
    room = min(padded(total), max_batch_tokens) - total
    for seq in held_back:  # chunks that cost no linear rows: the step computes them anyway
        if room <= 0:
            break
        feeds.append(Feed(seq, min(seq.pending, room)))
        room -= feeds[-1].tokens
    return feeds


def note_held(running: Seq[Sequence], feeds: Seq[Feed]) -> None:
    """Count, for each prompt still being prefilled, the steps in a row it was left out."""
    fed = {id(f.seq) for f in feeds}
    for seq in running:
        if seq.pending > 1:
            seq.held = 0 if id(seq) in fed else seq.held + 1


def runs_of(blocks: Seq[int], context: int, block_size: int) -> tuple[tuple[int, int], ...]:
    """The first ``context`` tokens of a block table as ``(first_slot, num_slots)`` ranges of
    the flat pool, merging consecutive block ids."""
    runs: list[list[int]] = []
    remaining = context
    for block in blocks[: -(-context // block_size)]:
        take = min(block_size, remaining)
        if runs and runs[-1][0] + runs[-1][1] == block * block_size:
            runs[-1][1] += take
        else:
            runs.append([block * block_size, take])
        remaining -= take
    return tuple((a, c) for a, c in runs)


def layout_of(
    feeds: Seq[Feed], block_size: int, device: torch.device, kernel: AttentionKernel
) -> StepLayout:
    """Slots and spans for ``feeds`` (tables already grown to hold every fed token), planned
    by the attention ``kernel``."""
    slots: list[np.ndarray] = []
    spans = []
    start = 0
    for seq, count in feeds:
        assert seq.table is not None
        positions = np.arange(seq.computed, seq.computed + count)
        table = np.asarray(seq.table.blocks, dtype=np.int64)
        slots.append(table[positions // block_size] * block_size + positions % block_size)
        context = seq.computed + count
        spans.append(SeqSpan(start, count, context, runs_of(seq.table.blocks, context, block_size)))
        start += count
    flat = torch.from_numpy(np.concatenate(slots)).to(device)
    plan, others = kernel.plan(spans, device)
    left = {id(span) for span in others}
    planned = tuple(s for s in spans if id(s) not in left)
    return StepLayout(flat, others, plan, planned, kernel=kernel)


def input_of(feeds: Seq[Feed], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``input_ids`` and ``position_ids``, each ``[1, T]`` int64."""
    ids = np.concatenate(
        [np.frombuffer(s.tokens, dtype=np.uint32)[s.computed : s.computed + n] for s, n in feeds]
    ).astype(np.int64)
    positions = np.concatenate([np.arange(s.computed, s.computed + n) for s, n in feeds])
    return (
        torch.from_numpy(ids)[None].to(device),
        torch.from_numpy(positions.astype(np.int64))[None].to(device),
    )

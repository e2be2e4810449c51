"""vLLM's ``prompt_logprobs``: for every prompt token after the first, its log-probability
given the tokens before it, its rank, and the ``top`` likeliest tokens at its position.

They need the logits at every prompt position, which a prefill that reuses cached KV never
computes for the cached positions (it feeds only the tokens past them). vLLM v1 then skips
reading the prefix cache for the whole request (``skip_reading_prefix_cache``, set whenever
``prompt_logprobs`` is asked for), so the request recomputes its whole prompt. Here the
prompt's logprobs come from a prefill of their own that reads nothing from the cache (and
stores nothing), in chunks of ``CHUNK`` positions so the ``[positions, vocab]`` logits stay
bounded; the generation itself is the same request without ``prompt_logprobs``, cached
prefix included, so its output is unchanged. Cost: one extra prefill of the prompt (its
last token excepted), whether or not the prompt is cached.

Log-probabilities are those of the raw logits (no request's penalties or bias apply to the
prompt), in float32, ``-inf`` reported as :data:`FLOOR`; a token's rank is how many tokens
are at least as likely (1 for the likeliest), as vLLM counts it.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np
import torch
from transformers import DynamicCache

from prefixkv.engine.logprob_records import FLOOR, Candidate, PromptTokenLogprob
from prefixkv.engine.pieces import Pieces
from prefixkv.tokens import TokenBytes

CHUNK = 256
"""Prompt positions per forward pass (SmolLM2's 49K vocabulary: 50 MB of float logits)."""


class EveryLogits(Protocol):
    def forward_every(self, ids: torch.Tensor, position: int, kv: DynamicCache) -> torch.Tensor:
        """``[n, vocab]`` float logits at each of ``ids``, fed at ``position...`` on ``kv``
        (which grows by ``n``)."""
        ...


def prompt_logprobs(
    model: EveryLogits, pieces: Pieces, ids: TokenBytes, top: int
) -> tuple[PromptTokenLogprob, ...]:
    """One record per prompt token after the first (the first has no position before it),
    from a prefill of ``ids`` that starts from nothing."""
    prompt = torch.from_numpy(np.frombuffer(ids, dtype=np.uint32).astype(np.int64))
    kv = DynamicCache()
    out: list[PromptTokenLogprob] = []
    for start in range(0, len(prompt) - 1, CHUNK):
        fed = prompt[start : min(start + CHUNK, len(prompt) - 1)]
        logprobs = torch.log_softmax(model.forward_every(fed, start, kv).float(), dim=-1)
        following = prompt[start + 1 : start + 1 + len(fed)].to(logprobs.device)
        out += _records(logprobs, following, pieces, top)
    return tuple(out)


def _records(
    logprobs: torch.Tensor, tokens: torch.Tensor, pieces: Pieces, top: int
) -> list[PromptTokenLogprob]:
    """``logprobs[i]`` (``[n, vocab]``) scores ``tokens[i]``: one record per row, the ranks
    and top-k taken for every row at once."""
    chosen = logprobs.gather(1, tokens[:, None])
    ranks = (logprobs >= chosen).sum(dim=1).tolist()
    values, ids = torch.topk(logprobs, min(top, logprobs.shape[1]), dim=1)
    rows = zip(
        tokens.tolist(), chosen[:, 0].tolist(), ranks, ids.tolist(), values.tolist(), strict=True
    )
    return [
        PromptTokenLogprob(
            _candidate(pieces, token, logprob),
            rank,
            tuple(_candidate(pieces, i, v) for i, v in zip(row_ids, row_values, strict=True)),
        )
        for token, logprob, rank, row_ids, row_values in rows
    ]


def _candidate(pieces: Pieces, token: int, logprob: float) -> Candidate:
    text, raw = pieces.piece(token)
    return Candidate(token, text, raw, logprob if math.isfinite(logprob) else FLOOR)

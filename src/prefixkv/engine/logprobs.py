"""Log-probabilities of generated tokens, from the logits the runner already has.

Reported from the *processed* logits (after the request's penalties, logit_bias and
min_tokens mask; see :mod:`prefixkv.engine.processors`), before temperature and top-p: the
distribution the controls leave, the same for a greedy and a sampled request (vLLM calls
this mode ``processed_logprobs``; its default reports the raw logits). One ``log_softmax``
in float32 per step, only for a sequence that asked (float64 costs three times as much on
a 49K vocabulary, for digits no client reads: see docs/decisions.md).
"""

from __future__ import annotations

import math

import torch

from prefixkv.engine.logprob_records import FLOOR, Candidate, TokenLogprob
from prefixkv.engine.pieces import Pieces


class LogprobReport:
    """Builds each generated token's TokenLogprob with the ``top`` likeliest tokens."""

    def __init__(self, pieces: Pieces, top: int) -> None:
        self.pieces, self.top = pieces, top

    def __call__(self, logits: torch.Tensor, token: int) -> TokenLogprob:
        """``logits``: the processed ``[vocab]`` logits ``token`` was chosen from."""
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        top: tuple[Candidate, ...] = ()
        if self.top:
            values, ids = torch.topk(logprobs, min(self.top, logprobs.numel()))
            top = tuple(
                self._candidate(i, v) for i, v in zip(ids.tolist(), values.tolist(), strict=True)
            )
        return TokenLogprob(self._candidate(token, float(logprobs[token])), top)

    def _candidate(self, token: int, logprob: float) -> Candidate:
        text, raw = self.pieces.piece(token)
        return Candidate(token, text, raw, logprob if math.isfinite(logprob) else FLOOR)

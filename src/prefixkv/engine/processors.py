"""Logits processors: a request's controls applied to its next-token logits, per sequence.

Each processor is a small object that changes ``[vocab]`` logits (``__call__``) and hears of
each chosen token (``accept``), so it keeps its own state (counts, a step number); a later
one (a grammar mask) joins the same list. :func:`processors_for` builds them in a fixed
order, and only for the controls a request sets: a request without any gets an empty
Pipeline, and its logits reach the sampler untouched (bit-identical, no cost).

Order: repetition penalty, then presence/frequency penalties, then logit_bias, then the
min_tokens mask (last, so no bias can lift an end token it holds off).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np
import torch

from prefixkv.engine.bitmask import private_copy
from prefixkv.engine.request import SamplingParams
from prefixkv.tokens import TokenBytes


class LogitsProcessor(Protocol):
    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits``: ``[vocab]`` float. Returns the processed logits (may change them in
        place and return them)."""
        ...

    def accept(self, token: int) -> None:
        """``token`` was chosen from the processed logits."""
        ...


class RepetitionPenalty:
    """vLLM's ``repetition_penalty`` (after CTRL): a token seen in the prompt or generated so
    far has a positive logit divided by ``penalty``, a negative one multiplied by it. Works
    on the seen ids only (a gather and a scatter), not on the whole vocabulary."""

    def __init__(self, penalty: float, prompt: TokenBytes) -> None:
        self.penalty = penalty
        self._seen = set(np.frombuffer(prompt, dtype=np.uint32).tolist())
        self._ids: torch.Tensor | None = None  # [seen] int64, remade after a new token

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self._ids is None:
            vocab = logits.shape[-1]
            self._ids = torch.tensor(sorted(t for t in self._seen if t < vocab), dtype=torch.long)
        seen = logits.index_select(0, self._ids)
        penalised = torch.where(seen > 0, seen / self.penalty, seen * self.penalty)
        return logits.index_copy_(0, self._ids, penalised)

    def accept(self, token: int) -> None:
        if token not in self._seen:
            self._seen.add(token)
            self._ids = None


class OccurrencePenalty:
    """OpenAI's ``frequency_penalty`` and ``presence_penalty``: over the tokens generated so
    far, ``logit - frequency * count - presence * (count > 0)``."""

    def __init__(self, presence: float, frequency: float) -> None:
        self.presence, self.frequency = presence, frequency
        self._counts: dict[int, int] = {}

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self._counts:
            ids = torch.tensor(list(self._counts), dtype=torch.long)
            counts = torch.tensor(list(self._counts.values()), dtype=logits.dtype)
            logits[ids] -= self.frequency * counts + self.presence
        return logits

    def accept(self, token: int) -> None:
        self._counts[token] = self._counts.get(token, 0) + 1


class LogitBias:
    """OpenAI's ``logit_bias``: a fixed number added to the logits of the tokens named."""

    def __init__(self, pairs: Iterable[tuple[int, float]]) -> None:
        ids, biases = zip(*pairs, strict=True)
        self._ids = torch.tensor(ids, dtype=torch.long)
        self._biases = torch.tensor(biases, dtype=torch.float32)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        logits[self._ids] += self._biases.to(logits.dtype)
        return logits

    def accept(self, token: int) -> None:
        pass


class MinTokens:
    """vLLM's ``min_tokens``: the tokens that would end the reply (end-of-sequence and
    ``stop_token_ids``) get ``-inf`` until ``count`` tokens were generated."""

    def __init__(self, count: int, enders: Iterable[int]) -> None:
        self._left = count
        self._enders = sorted(enders)

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self._left > 0:
            ids = [t for t in self._enders if t < logits.shape[-1]]
            logits[ids] = -torch.inf
        return logits

    def accept(self, token: int) -> None:
        self._left -= 1


class Pipeline:
    """Processors applied in order; empty for a request that sets no control."""

    def __init__(self, processors: tuple[LogitsProcessor, ...]) -> None:
        self.processors = processors

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """The processed ``[vocab]`` logits: ``logits`` itself when empty, else a copy the
        processors changed in place (``logits`` may be an inference tensor, a view of the
        batch's logits: never written)."""
        if self.processors:
            logits = private_copy(logits)
        for processor in self.processors:
            logits = processor(logits)
        return logits

    def accept(self, token: int) -> None:
        for processor in self.processors:
            processor.accept(token)


def processors_for(params: SamplingParams, prompt: TokenBytes, enders: frozenset[int]) -> Pipeline:
    """The request's processors in the module's fixed order; ``enders``: the ids that end
    the reply (end-of-sequence unless ignored, and ``stop_token_ids``)."""
    chosen: list[LogitsProcessor] = []
    if params.repetition_penalty != 1.0:
        chosen.append(RepetitionPenalty(params.repetition_penalty, prompt))
    if params.presence_penalty or params.frequency_penalty:
        chosen.append(OccurrencePenalty(params.presence_penalty, params.frequency_penalty))
    if params.logit_bias:
        chosen.append(LogitBias(params.logit_bias))
    if params.min_tokens and enders:
        chosen.append(MinTokens(params.min_tokens, enders))
    return Pipeline(tuple(chosen))

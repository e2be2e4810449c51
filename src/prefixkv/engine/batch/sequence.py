"""Sequence: one request's state while the batch runner serves it, and the sink it reports to.

A sequence's tokens are its prompt then every token it generated; ``computed`` of them have
KV in its block table. Each step feeds ``tokens[computed:computed + n]``; once everything
known is fed, the logits of the last fed token give the next token. Preempting a sequence
closes its table (its full blocks stay indexed) and keeps the rest (tokens, sampler state,
text), so it resumes from its cached prefix and continues exactly where it stopped.
"""

from __future__ import annotations

import array
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from prefixkv.cache.table import BlockTable
from prefixkv.engine.detok import TextStream
from prefixkv.engine.request import Completion, Request
from prefixkv.engine.role import Outcome, RequestCancelled, Sink
from prefixkv.engine.sampling import Sampler
from prefixkv.tokens import TokenBytes

__all__ = ["Outcome", "RequestCancelled", "Sequence", "Sink"]


@dataclass(eq=False)
class Sequence:
    """A request being served. Owned by the runner thread."""

    request: Request
    sink: Sink
    sampler: Sampler
    text: TextStream
    eos_ids: frozenset[int]
    arrived: float
    tokens: array.array[int] = field(default_factory=lambda: array.array("I"))
    table: BlockTable | None = None
    computed: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = -1  # set at first admission (-1: never admitted)
    generated: list[int] = field(default_factory=list)
    first_token_at: float = 0.0
    finish_reason: str = "length"
    done: bool = False

    @classmethod
    def create(cls, request: Request, sink: Sink, tokenizer: Any, eos: frozenset[int]) -> Sequence:
        seq = cls(
            request,
            sink,
            Sampler(request.params),
            TextStream(tokenizer, request.params.stop),
            eos,
            time.perf_counter(),
        )
        seq.tokens.frombytes(request.ids)
        seq.prompt_tokens = len(seq.tokens)
        return seq

    @property
    def pending(self) -> int:
        """Known tokens not fed yet (at least 1 while running: the last token)."""
        return len(self.tokens) - self.computed

    def fed_bytes(self) -> TokenBytes:
        """The tokens whose KV the table holds, canonical form (for indexing)."""
        return TokenBytes(self.tokens[: self.computed].tobytes())

    def lookup_bytes(self) -> TokenBytes:
        """What to look up when (re)admitted: every known token but the last, whose logits
        must be computed (so the cached part never covers a token this sequence writes)."""
        return TokenBytes(self.tokens[: len(self.tokens) - 1].tobytes())

    def accept(self, logits: torch.Tensor) -> str:
        """Sample the next token from ``[vocab]`` logits; return the text to send (may be
        empty). Sets ``done`` when the sequence ended (eos, stop string or max_tokens)."""
        token = self.sampler(logits)
        if not self.generated:
            self.first_token_at = time.perf_counter()
        self.generated.append(token)
        if token in self.eos_ids:
            self.finish_reason, self.done = "stop", True
            return self.text.finish()
        delta = self.text.push(token)
        if self.text.stopped:
            self.finish_reason, self.done = "stop", True
        elif len(self.generated) == self.request.max_tokens:
            self.done = True
        else:
            self.tokens.append(token)
            return delta
        return delta + self.text.finish()

    def completion(self) -> Completion:
        now = time.perf_counter()
        return Completion(
            text=self.text.text,
            token_ids=tuple(self.generated),
            prompt_tokens=self.prompt_tokens,
            cached_tokens=max(self.cached_tokens, 0),
            finish_reason=self.finish_reason,
            ttft=self.first_token_at - self.arrived if self.generated else 0.0,
            total_time=now - self.arrived,
        )

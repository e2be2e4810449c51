"""Decoding: one request's token choices and text, the same for the serial engine and the
batch runner. Each call to ``accept`` takes the logits after the last fed token, samples,
and says what text to send and whether the request is done."""

from __future__ import annotations

import time
from typing import Any

import torch

from prefixkv.engine.detok import TextStream
from prefixkv.engine.request import Completion, Request
from prefixkv.engine.sampling import Sampler


class Decoding:
    """Sampler (the request's params), text with stop strings, and the end conditions:
    an end-of-sequence token, a stop string, or ``max_tokens``."""

    def __init__(self, request: Request, tokenizer: Any, eos_ids: frozenset[int]) -> None:
        self.max_tokens = request.max_tokens
        self.sampler = Sampler(request.params)
        self.text = TextStream(tokenizer, request.params.stop)
        self.eos_ids = eos_ids
        self.generated: list[int] = []
        self.first_token_at = 0.0
        self.finish_reason = "length"
        self.done = False

    def accept(self, logits: torch.Tensor) -> str:
        """Sample the next token from ``[vocab]`` logits; return the text to send (may be
        empty; everything held back once done). Sets ``done`` when the request ended."""
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
        elif len(self.generated) == self.max_tokens:
            self.done = True
        if self.done:
            return delta + self.text.finish()
        return delta

    def completion(self, prompt_tokens: int, cached_tokens: int, started: float) -> Completion:
        """The record of the finished request; times from ``started`` (perf_counter)."""
        return Completion(
            text=self.text.text,
            token_ids=tuple(self.generated),
            prompt_tokens=prompt_tokens,
            cached_tokens=cached_tokens,
            finish_reason=self.finish_reason,
            ttft=self.first_token_at - started if self.generated else 0.0,
            total_time=time.perf_counter() - started,
        )

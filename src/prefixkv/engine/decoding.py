"""Decoding: one request's token choices and text, the same for the serial engine and the
batch runner. Each call to ``accept`` takes the logits after the last fed token, runs the
request's logits processors, samples, reports what to send to the request's sink, and says
whether the request is done."""

from __future__ import annotations

import time
from typing import Any

import torch

from prefixkv.engine.detok import TextStream
from prefixkv.engine.grammar import grammars_of
from prefixkv.engine.logprob_records import TokenLogprob
from prefixkv.engine.logprobs import LogprobReport
from prefixkv.engine.pieces import pieces_of
from prefixkv.engine.processors import Pipeline, processors_for
from prefixkv.engine.request import Completion, Request
from prefixkv.engine.role import Sink
from prefixkv.engine.sampling import Sampler


class Decoding:
    """Processors and sampler (the request's params), text with stop strings, and the end
    conditions: an end token (end-of-sequence unless ``ignore_eos``, or one of
    ``stop_token_ids``), a stop string, a complete grammar, or ``max_tokens``."""

    def __init__(self, request: Request, tokenizer: Any, eos_ids: frozenset[int]) -> None:
        params = request.params
        self.max_tokens = request.max_tokens
        self.enders = (frozenset() if params.ignore_eos else eos_ids) | frozenset(
            params.stop_token_ids
        )
        self.process = processors_for(params, request.ids, self.enders)
        # The grammar mask comes last: no bias or penalty can lift a token it forbids.
        self.grammar = (
            None if params.grammar is None else grammars_of(tokenizer).mask(params.grammar)
        )
        if self.grammar is not None:
            self.process = Pipeline((*self.process.processors, self.grammar))
        self.sampler = Sampler(params)
        self.report = (
            None
            if params.logprobs is None
            else LogprobReport(pieces_of(tokenizer), params.logprobs)
        )
        self.text = TextStream(tokenizer, params.stop)
        self.generated: list[int] = []
        self.logprobs: list[TokenLogprob] = []
        self.first_token_at = 0.0
        self.finish_reason = "length"
        self.done = False

    def accept(self, logits: torch.Tensor, sink: Sink) -> None:
        """Choose the next token from ``[vocab]`` logits (never written: the processors
        work on a copy); deliver its TokenLogprob (when asked for) and then the text now safe to
        send (when any; everything held back once done) to ``sink``. Sets ``done`` when the
        request ended."""
        logits = self.process(logits)
        token = self.sampler(logits)
        self.process.accept(token)
        if not self.generated:
            self.first_token_at = time.perf_counter()
        self.generated.append(token)
        if self.report is not None:
            self.logprobs.append(self.report(logits, token))
            sink.deliver(self.logprobs[-1])
        delta = self._text(token)
        if delta:
            sink.deliver(delta)

    def _text(self, token: int) -> str:
        if token in self.enders:
            self.finish_reason, self.done = "stop", True
            return self.text.finish()
        delta = self.text.push(token)
        if self.text.stopped or (self.grammar is not None and self.grammar.finished):
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
            logprobs=tuple(self.logprobs),
        )

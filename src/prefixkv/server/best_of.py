"""The completions API's ``best_of``, with vLLM's semantics: ``best_of`` samples of the
prompt are generated (as ``n`` samples are, sharing the prompt's KV; sample ``i`` of a
seeded request seeded ``seed + i``), and the ``n`` with the highest cumulative
log-probability are returned, best first, as choices ``0..n-1``.

A sample's cumulative log-probability is the sum of its tokens' logprobs as the API reports
them (the distribution the penalties, bias and ``min_tokens`` leave, before temperature and
top-p; :mod:`prefixkv.engine.logprobs`), so a client asking for ``logprobs`` can check the
order; ties keep the samples' order. The samples are asked for their chosen tokens' logprobs
even when the request did not ask (they are then not reported). ``usage`` counts the tokens
of every sample generated, the ones not returned included: what the request cost, as
OpenAI bills it.

Refused with a 400 naming ``best_of``: less than ``n``, more than ``MAX_N``, not an
integer, streaming with ``best_of`` > ``n`` (a choice cannot be chosen before every sample
has ended; OpenAI refuses it too), and any ``best_of`` other than 1 in the chat API, which
has no such field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from prefixkv.engine.request import Completion, SamplingParams, wrong_type
from prefixkv.engine.samples import MAX_N
from prefixkv.server.errors import APIError


def read_best_of(body: Mapping[str, Any], n: int, stream: bool) -> int:
    """The samples to generate for ``body`` (``best_of``, ``n`` when absent or null);
    raises APIError naming ``best_of``."""
    value = body.get("best_of")
    if value is None:
        return n
    if isinstance(value, bool) or not isinstance(value, int):
        raise wrong_type("best_of", "an integer", value)
    if not n <= value <= MAX_N:
        raise APIError.invalid(
            f"best_of must be in [n, {MAX_N}] (n is {n}), got {value}", "best_of"
        )
    if stream and value > n:
        raise APIError.invalid("best_of greater than n cannot be streamed", "best_of")
    return value


def scored(params: SamplingParams, best_of: int, n: int) -> SamplingParams:
    """``params`` for the samples: with the chosen tokens' logprobs when some are to be
    chosen between and the request asked for none."""
    if best_of == n or params.logprobs is not None:
        return params
    return dataclasses.replace(params, logprobs=0)


def best(completions: Sequence[Completion], n: int) -> list[Completion]:
    """The ``n`` completions with the highest cumulative logprob, best first (stable); all
    of them, in order, when there are ``n``."""
    if len(completions) == n:
        return list(completions)
    return sorted(completions, key=cumulative_logprob, reverse=True)[:n]


def cumulative_logprob(completion: Completion) -> float:
    """The sum of the completion's tokens' logprobs (each sample was asked for them)."""
    assert len(completion.logprobs) == completion.completion_tokens, "asked for no logprobs"
    return sum(item.chosen.logprob for item in completion.logprobs)

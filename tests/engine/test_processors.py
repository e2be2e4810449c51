"""The logits processors against plain reference implementations of each control, over random
logits and histories (hypothesis), and SamplingParams' checks of the controls."""

from __future__ import annotations

import collections
import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv.engine.processors import processors_for
from prefixkv.engine.request import InvalidRequestError, SamplingParams
from prefixkv.tokens import as_token_bytes

VOCAB = 12
LOGITS = st.lists(st.floats(-30, 30, allow_nan=False, width=32), min_size=VOCAB, max_size=VOCAB)
IDS = st.lists(st.integers(0, VOCAB - 1), max_size=10)


def reference(
    logits: list[float],
    params: SamplingParams,
    prompt: list[int],
    generated: list[int],
    enders: frozenset[int],
) -> list[float]:
    """Each control as its documentation states it, one token at a time, in the processors'
    order: repetition, presence/frequency, logit_bias, min_tokens."""
    out = list(logits)
    p = params.repetition_penalty
    for t in set(prompt) | set(generated):
        out[t] = out[t] / p if out[t] > 0 else out[t] * p
    for t, count in collections.Counter(generated).items():
        out[t] -= params.frequency_penalty * count + params.presence_penalty
    for t, bias in params.logit_bias:
        out[t] += bias
    if len(generated) < params.min_tokens:
        for t in enders:
            out[t] = -math.inf
    return out


@settings(max_examples=150, deadline=None)
@given(
    logits=LOGITS,
    prompt=IDS.filter(bool),
    generated=IDS,
    repetition=st.sampled_from([1.0, 0.5, 1.3, 2.0]),
    presence=st.floats(-2, 2),
    frequency=st.floats(-2, 2),
    bias=st.dictionaries(st.integers(0, VOCAB - 1), st.floats(-100, 100), max_size=4),
    min_tokens=st.integers(0, 12),
    enders=st.frozensets(st.integers(0, VOCAB - 1), max_size=3),
)
def test_processors_match_the_reference(
    logits: list[float],
    prompt: list[int],
    generated: list[int],
    repetition: float,
    presence: float,
    frequency: float,
    bias: dict[int, float],
    min_tokens: int,
    enders: frozenset[int],
) -> None:
    params = SamplingParams.create(
        presence_penalty=presence,
        frequency_penalty=frequency,
        repetition_penalty=repetition,
        logit_bias=bias,
        min_tokens=min_tokens,
    )
    pipeline = processors_for(params, as_token_bytes(prompt), enders)
    for step in range(len(generated) + 1):  # every step, each after the tokens before it
        given_logits = torch.tensor(logits, dtype=torch.float32)
        out = pipeline(given_logits)
        want = reference(logits, params, prompt, generated[:step], enders)
        torch.testing.assert_close(out, torch.tensor(want, dtype=torch.float32))
        assert given_logits.tolist() == torch.tensor(logits).tolist()  # the input stays
        if step < len(generated):
            pipeline.accept(generated[step])


def test_a_request_without_controls_gets_its_logits_untouched() -> None:
    pipeline = processors_for(SamplingParams(logprobs=3), as_token_bytes([1, 2]), frozenset({0}))
    logits = torch.randn(VOCAB)
    assert pipeline.processors == () and pipeline(logits) is logits


def test_penalties_change_what_they_should() -> None:
    logits = torch.tensor([2.0, -2.0, 1.0, 0.5])
    rep = processors_for(
        SamplingParams(repetition_penalty=2.0), as_token_bytes([0, 1]), frozenset()
    )
    assert rep(logits).tolist() == [1.0, -4.0, 1.0, 0.5]
    occ = processors_for(
        SamplingParams(presence_penalty=0.5, frequency_penalty=0.25),
        as_token_bytes([0]),
        frozenset(),
    )
    for token in (2, 2, 3):
        occ.accept(token)
    assert occ(logits).tolist() == [2.0, -2.0, 1.0 - 0.5 - 0.5, 0.5 - 0.25 - 0.5]


def test_min_tokens_holds_the_enders_off_then_lets_them_go() -> None:
    pipeline = processors_for(
        SamplingParams(min_tokens=2, logit_bias=((3, 100.0),)), as_token_bytes([1]), frozenset({3})
    )
    logits = torch.zeros(VOCAB)
    for _ in range(2):
        assert pipeline(logits)[3] == -math.inf
        pipeline.accept(5)
    assert pipeline(logits)[3] == 100.0


BAD: list[tuple[dict[str, Any], str]] = [
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"frequency_penalty": math.nan}, "frequency_penalty"),
    ({"repetition_penalty": 0}, "repetition_penalty"),
    ({"repetition_penalty": -1.0}, "repetition_penalty"),
    ({"logit_bias": {"5": 101}}, "logit_bias"),
    ({"logit_bias": {"-5": 1}}, "logit_bias"),
    ({"logit_bias": {"five": 1}}, "logit_bias"),
    ({"logit_bias": {"5": "x"}}, "logit_bias"),
    ({"logit_bias": [5]}, "logit_bias"),
    ({"min_tokens": -1}, "min_tokens"),
    ({"min_tokens": 5, "max_tokens": 4}, "min_tokens"),
    ({"min_tokens": 1.5}, "min_tokens"),
    ({"stop_token_ids": [1, -1]}, "stop_token_ids"),
    ({"stop_token_ids": ["1"]}, "stop_token_ids"),
    ({"stop_token_ids": 3}, "stop_token_ids"),
    ({"ignore_eos": 1}, "ignore_eos"),
    ({"logprobs": 21}, "logprobs"),
    ({"logprobs": -1}, "logprobs"),
    ({"logprobs": True}, "logprobs"),
]


@pytest.mark.parametrize(("values", "param"), BAD, ids=[str(v) for v, _ in BAD])
def test_bad_controls_are_refused_naming_the_field(values: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        SamplingParams.create(**values)
    assert caught.value.param == param


def test_logit_bias_keys_may_be_json_strings_and_are_kept_sorted() -> None:
    params = SamplingParams.create(logit_bias={"7": 1, 3: -2.5})
    assert params.logit_bias == ((3, -2.5), (7, 1.0))

"""Grammar masks over the tiny character tokenizer: sampling from random logits under a mask
always spells a sentence of the grammar; compiled grammars are cached per spec; a spec that
does not compile, or a missing extra, is an InvalidRequestError naming the field."""

from __future__ import annotations

import json
import re
import sys
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv.engine.grammar import Grammars, grammars_of
from prefixkv.engine.request import GrammarSpec, InvalidRequestError

from .tiny import tiny_tokenizer

pytest.importorskip("llguidance", reason="the grammar extra is not installed")

TOKENIZER = tiny_tokenizer(extra="{}[]")
PADDED_VOCAB = len(TOKENIZER) + 11  # a model's logits may be wider than its tokenizer
REGEX = r"(ab|c)+-[0-9]{2,4}"
SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer"}, "s": {"enum": ["x", "yz"]}},
    "required": ["n", "s"],
    "additionalProperties": False,
}


def sample(spec: GrammarSpec, seed: int, steps: int = 60) -> tuple[str, bool]:
    """Sample from random logits under ``spec``'s mask; the text and whether it finished."""
    generator = torch.Generator().manual_seed(seed)
    mask = grammars_of(TOKENIZER).mask(spec)
    chosen: list[int] = []
    for _ in range(steps):
        logits = mask(torch.randn(PADDED_VOCAB, generator=generator) * 3)
        assert logits[len(TOKENIZER) :].isinf().all()  # padding ids never allowed
        token = int(torch.multinomial(torch.softmax(logits, -1), 1, generator=generator))
        if token == TOKENIZER.eos_token_id:
            return TOKENIZER.decode(chosen), True
        mask.accept(token)
        chosen.append(token)
        if mask.finished:
            return TOKENIZER.decode(chosen), True
    return TOKENIZER.decode(chosen), False


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_a_masked_sample_matches_the_regex(seed: int) -> None:
    text, finished = sample(GrammarSpec("regex", REGEX, "r"), seed)
    assert finished and re.fullmatch(REGEX, text), text


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_a_masked_sample_follows_the_schema(seed: int) -> None:
    text, finished = sample(GrammarSpec("json_schema", json.dumps(SCHEMA), "s"), seed, 200)
    assert finished, text
    value = json.loads(text)
    assert set(value) == {"n", "s"} and type(value["n"]) is int
    assert value["s"] in ("x", "yz")


def test_compiled_once_per_spec() -> None:
    grammars = Grammars(TOKENIZER)
    first = grammars.compile(GrammarSpec("regex", "a+", "r"))
    assert grammars.compile(GrammarSpec("regex", "a+", "r")) is first
    assert grammars.compile(GrammarSpec("regex", "b+", "r")) is not first


@pytest.mark.parametrize(
    ("spec", "param"),
    [
        (GrammarSpec("regex", "[a-", "structured_outputs.regex"), "structured_outputs.regex"),
        (
            GrammarSpec("lark", "start: (", "structured_outputs.grammar"),
            "structured_outputs.grammar",
        ),
        (GrammarSpec("json_schema", '{"type": "nonsense"}', "schema"), "schema"),
        (GrammarSpec("json_schema", "[1, 2]", "schema"), "schema"),
    ],
)
def test_a_spec_that_does_not_compile_names_its_field(spec: GrammarSpec, param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        Grammars(TOKENIZER).compile(spec)
    assert caught.value.param == param


def test_without_the_extra_the_error_names_it(monkeypatch: Any) -> None:
    monkeypatch.setitem(sys.modules, "llguidance", None)  # import fails as if absent
    with pytest.raises(InvalidRequestError, match=r"prefixkv\[grammar\]") as caught:
        Grammars(TOKENIZER).compile(GrammarSpec("regex", "a", "r"))
    assert caught.value.param == "response_format"

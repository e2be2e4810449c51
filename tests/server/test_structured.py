"""Structured outputs on the real ``prefixkv serve`` over a tiny random model, through the
official openai client. A random model writes gibberish, so whatever parses here parses
because of the mask: JSON objects, a schema's shape, a regex, a choice, a Lark grammar, at
temperature > 0 with seeds, streamed and not; bad specs get a 400 naming the field."""

from __future__ import annotations

import json
import re
from typing import Any

import openai
import pytest

from ..engine.tiny import CHARS, SPECIALS
from .conftest import JSON_CHARS

pytest.importorskip("llguidance", reason="the grammar extra is not installed")
pytestmark = [pytest.mark.process, pytest.mark.slow]

SEEDS = (1, 2, 3)
MESSAGES: Any = [{"role": "user", "content": "Describe the ship as JSON."}]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "crew": {"type": "integer", "minimum": 0, "maximum": 999},
        "ports": {"type": "array", "items": {"enum": ["Oslo", "Rome"]}, "maxItems": 3},
    },
    "required": ["name", "crew", "ports"],
    "additionalProperties": False,
}
RESPONSE_FORMAT: Any = {
    "type": "json_schema",
    "json_schema": {"name": "ship", "schema": SCHEMA, "strict": True},
}


@pytest.fixture(scope="module")
def client(tiny_json_client: openai.OpenAI) -> openai.OpenAI:
    """The session's server on a tiny random model whose characters can spell JSON."""
    return tiny_json_client


def chat(client: openai.OpenAI, stream: bool = False, **extra: Any) -> tuple[str, str | None]:
    """The reply's text and finish reason, streamed or not."""
    body: Any = {"model": "tiny-json", "messages": MESSAGES, "max_tokens": 400, "temperature": 1.0}
    body.update(extra)
    if not stream:
        choice = client.chat.completions.create(**body).choices[0]
        return choice.message.content or "", choice.finish_reason
    chunks = [c for c in client.chat.completions.create(**body, stream=True) if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    return text, chunks[-1].choices[0].finish_reason


def check_ship(value: Any) -> None:
    """SCHEMA checked by hand (jsonschema is not a dependency)."""
    assert isinstance(value, dict) and set(value) == {"name", "crew", "ports"}
    assert isinstance(value["name"], str) and len(value["name"]) <= 12
    assert type(value["crew"]) is int and 0 <= value["crew"] <= 999
    assert isinstance(value["ports"], list) and len(value["ports"]) <= 3
    assert all(p in ("Oslo", "Rome") for p in value["ports"])


def test_without_a_mask_the_model_writes_no_json(client: openai.OpenAI) -> None:
    """The control: the same requests unmasked do not parse (so the mask is what works)."""
    for seed in SEEDS:
        text, _ = chat(client, seed=seed, max_tokens=40)
        with pytest.raises(ValueError):
            json.loads(text)


def token_id(char: str) -> int:
    return len(SPECIALS) + (CHARS + JSON_CHARS).index(char)


@pytest.mark.parametrize("stream", [False, True])
def test_json_object_parses(client: openai.OpenAI, stream: bool) -> None:
    """Any object: its strings end when a quote is drawn from ~90 characters, so quotes and
    closing braces are favoured (a bias alone would write ``"}"}``: the mask keeps it JSON)."""
    bias = {str(token_id('"')): 4, str(token_id("}")): 3}
    for seed in SEEDS:
        text, finish = chat(
            client, stream, seed=seed, response_format={"type": "json_object"}, logit_bias=bias
        )
        assert finish == "stop", text
        assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_holds(client: openai.OpenAI, stream: bool) -> None:
    texts = set()
    for seed in SEEDS:
        text, finish = chat(client, stream, seed=seed, response_format=RESPONSE_FORMAT)
        assert finish == "stop", text
        check_ship(json.loads(text))
        # in the schema's order (name, crew, ports), as OpenAI writes it: not sorted
        assert list(json.loads(text)) == list(SCHEMA["properties"])
        texts.add(text)
    assert len(texts) > 1  # sampled, not one forced string
    again, _ = chat(client, stream, seed=SEEDS[0], response_format=RESPONSE_FORMAT)
    streamed_or_not, _ = chat(client, not stream, seed=SEEDS[0], response_format=RESPONSE_FORMAT)
    assert again == streamed_or_not  # seeded: the same reply either way


@pytest.mark.parametrize("stream", [False, True])
def test_completions_regex_choice_and_grammar(client: openai.OpenAI, stream: bool) -> None:
    common: Any = {"model": "tiny-json", "prompt": "Code:", "max_tokens": 50, "temperature": 1.2}
    cases: list[tuple[dict[str, Any], Any]] = [
        ({"regex": r"[A-Z]{2}-\d{3}( ok)?"}, re.compile(r"[A-Z]{2}-[0-9]{3}( ok)?").fullmatch),
        ({"choice": ["port", "starboard", 'a "quoted" one']}, None),
        ({"grammar": 'start: "(" NUM ("," NUM)* ")"\nNUM: /[0-9]{1,2}/'}, None),
    ]
    choices = ["port", "starboard", 'a "quoted" one']
    grammar = re.compile(r"\([0-9]{1,2}(,[0-9]{1,2})*\)").fullmatch
    for spec, check in cases:
        for seed in SEEDS:
            body = {**common, "seed": seed, "extra_body": {"structured_outputs": spec}}
            if stream:
                chunks = list(client.completions.create(**body, stream=True))
                text = "".join(c.choices[0].text for c in chunks if c.choices)
                finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
            else:
                reply = client.completions.create(**body).choices[0]
                text, finish = reply.text, reply.finish_reason
            if "choice" in spec:
                assert text in choices
            else:
                assert (check or grammar)(text), (spec, text)
            assert finish == "stop", (spec, text)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 3}}},
            "response_format.json_schema.schema",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
                }
            },
            "response_format.json_schema.schema",
        ),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"extra_body": {"structured_outputs": {"regex": "[a-"}}}, "structured_outputs.regex"),
        (
            {"extra_body": {"structured_outputs": {"grammar": "start: ("}}},
            "structured_outputs.grammar",
        ),
        ({"extra_body": {"structured_outputs": {"choice": []}}}, "structured_outputs.choice"),
        ({"extra_body": {"structured_outputs": {}}}, "structured_outputs"),
        (
            {
                "response_format": {"type": "json_object"},
                "extra_body": {"structured_outputs": {"regex": "a"}},
            },
            "structured_outputs",
        ),
    ],
)
def test_bad_specs_are_400s_naming_the_field(
    client: openai.OpenAI, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client, **extra)
    assert caught.value.param == param
    # and the server goes on serving (sampled at temperature 1, two tokens of a random
    # model may decode to no text: the answer's finish reason is what shows it was served)
    _, reason = chat(client, max_tokens=2)
    assert reason in ("length", "stop")


def test_grammar_sequences_share_a_batch_with_free_ones(client: openai.OpenAI) -> None:
    """Masked and unmasked requests at once (one batch): each gets its own."""
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int) -> tuple[int, str]:
        if i % 2:
            return i, chat(client, seed=i, response_format=RESPONSE_FORMAT)[0]
        return i, chat(client, seed=i, max_tokens=30)[0]

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(6)))
    for i, text in results:
        if i % 2:
            check_ship(json.loads(text))
        else:
            assert text  # free text, unconstrained


@pytest.mark.parametrize("stream", [False, True])
def test_each_of_n_samples_follows_the_schema(client: openai.OpenAI, stream: bool) -> None:
    """n > 1: every sample carries its own matcher (one prompt, n masks)."""
    body: Any = {
        "model": "tiny-json",
        "messages": MESSAGES,
        "max_tokens": 400,
        "temperature": 1.0,
        "seed": 7,
        "n": 3,
        "response_format": RESPONSE_FORMAT,
    }
    if stream:
        texts = ["", "", ""]
        for chunk in client.chat.completions.create(**body, stream=True):
            for choice in chunk.choices:
                texts[choice.index] += choice.delta.content or ""
    else:
        texts = [c.message.content or "" for c in client.chat.completions.create(**body).choices]
    for text in texts:
        check_ship(json.loads(text))
    assert len(set(texts)) > 1

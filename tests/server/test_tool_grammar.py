"""``tool_choice`` ``required`` and a named function, enforced by the grammar, on the real
``prefixkv serve`` over a tiny random model, through the official openai client. The model
writes gibberish, so a parsed call with arguments that follow the function's schema is the
mask's doing (the control: ``auto`` gives none); streamed (arguments in pieces) and not,
several seeds."""

from __future__ import annotations

import json
from typing import Any

import openai
import pytest

pytest.importorskip("llguidance", reason="the grammar extra is not installed")
pytestmark = [pytest.mark.process, pytest.mark.slow]

SEEDS = (1, 2, 3)
MESSAGES: Any = [{"role": "user", "content": "What is the weather like?"}]


def function(name: str, properties: dict[str, Any]) -> dict[str, Any]:
    parameters = {"type": "object", "properties": properties, "required": sorted(properties),
                  "additionalProperties": False}  # fmt: skip
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


# the city's schema through a local $ref: rebased under the call's schema, it still holds
WEATHER = function("get_weather", {"city": {"$ref": "#/$defs/city"}})
WEATHER["function"]["parameters"]["$defs"] = {"city": {"type": "string", "maxLength": 8}}
TIME = function("get_time", {"zone": {"enum": ["UTC", "CET"]}, "hour": {"type": "integer",
                "minimum": 0, "maximum": 23}})  # fmt: skip
NAMED: Any = {"type": "function", "function": {"name": "get_time"}}


@pytest.fixture(scope="module")
def client(tiny_json_client: openai.OpenAI) -> openai.OpenAI:
    return tiny_json_client


def calls(client: openai.OpenAI, stream: bool, **extra: Any) -> tuple[list[Any], str | None, str]:
    """The reply's calls as (name, parsed arguments), its finish reason and its content; a
    call cut by max_tokens (finish reason ``length``) has its arguments' text instead. A
    streamed call's arguments must come in more than one piece."""
    body: Any = {"model": "tiny-json", "messages": MESSAGES, "tools": [WEATHER, TIME],
                 "max_tokens": 300, "temperature": 1.0, **extra}  # fmt: skip
    if not stream:
        choice = client.chat.completions.create(**body).choices[0]
        found = [
            (c.function.name, _parsed(c.function.arguments, choice.finish_reason))
            for c in choice.message.tool_calls or []
            if c.type == "function"
        ]
        return found, choice.finish_reason, choice.message.content or ""
    names: dict[int, str] = {}
    arguments: dict[int, str] = {}
    pieces: dict[int, int] = {}
    reason, content = None, ""
    for chunk in client.chat.completions.create(**body, stream=True):
        for part in chunk.choices:
            reason = part.finish_reason or reason
            content += part.delta.content or ""
            for call in part.delta.tool_calls or []:
                assert call.function is not None
                names[call.index] = names.get(call.index, "") + (call.function.name or "")
                more = call.function.arguments or ""
                arguments[call.index] = arguments.get(call.index, "") + more
                pieces[call.index] = pieces.get(call.index, 0) + bool(more)
    whole = [i for i in names if reason != "length" or i < max(names)]  # not cut
    assert all(pieces[i] > 1 for i in whole), pieces
    found = [(names[i], _parsed(arguments[i], reason)) for i in sorted(names)]
    return found, reason, content


def _parsed(arguments: str, reason: str | None) -> Any:
    """The arguments parsed; their text when the reply was cut (they may not parse)."""
    return arguments if reason == "length" else json.loads(arguments)


def check_call(name: str, arguments: Any) -> None:
    if isinstance(arguments, str):  # cut by max_tokens: a prefix of the forced JSON
        assert arguments.startswith("{") and name in ("get_weather", "get_time")
        return
    if name == "get_weather":
        assert set(arguments) == {"city"} and isinstance(arguments["city"], str)
        assert len(arguments["city"]) <= 8
    else:
        assert name == "get_time" and set(arguments) == {"zone", "hour"}
        assert arguments["zone"] in ("UTC", "CET")
        assert type(arguments["hour"]) is int and 0 <= arguments["hour"] <= 23


def test_unforced_the_model_makes_no_call(client: openai.OpenAI) -> None:
    """The control: with ``auto`` the random model never writes a call."""
    for seed in SEEDS:
        found, reason, _ = calls(client, False, seed=seed, tool_choice="auto")
        assert found == [] and reason != "tool_calls"


@pytest.mark.parametrize("stream", [False, True])
def test_a_named_choice_gives_one_call_of_that_function(
    client: openai.OpenAI, stream: bool
) -> None:
    for seed in SEEDS:
        # parallel_tool_calls is true (the default): a named choice is still one call
        found, reason, content = calls(client, stream, seed=seed, tool_choice=NAMED)
        assert reason == "stop" and content == ""  # stop, as OpenAI and vLLM say it
        (only,) = found
        assert only[0] == "get_time"
        check_call(*only)


@pytest.mark.parametrize("stream", [False, True])
def test_required_gives_declared_calls(client: openai.OpenAI, stream: bool) -> None:
    """One or more calls (parallel calls allowed), each of a declared function with
    arguments that follow its schema; a block cut by max_tokens after its name is a call
    with the arguments written so far (finish reason ``length``), before its name text."""
    names = set()
    for seed in SEEDS:
        found, reason, content = calls(client, stream, seed=seed, tool_choice="required")
        assert found or (reason == "length" and content.startswith("<tool_")), content
        for call in found:
            check_call(*call)
            names.add(call[0])
        assert reason in ("tool_calls", "length")
        assert all(not isinstance(a, str) for _, a in found[:-1])  # only the last is cut


def test_required_without_parallel_calls_is_one_call(client: openai.OpenAI) -> None:
    for seed in SEEDS:
        found, reason, _ = calls(
            client, False, seed=seed, tool_choice="required", parallel_tool_calls=False
        )
        assert reason == "tool_calls" and len(found) == 1
        check_call(*found[0])


def test_each_of_n_samples_is_a_call(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="tiny-json", messages=MESSAGES, tools=[WEATHER, TIME], tool_choice=NAMED,
        parallel_tool_calls=False, n=3, seed=5, temperature=1.0, max_tokens=300,
    )  # fmt: skip
    assert [c.index for c in reply.choices] == [0, 1, 2]
    for choice in reply.choices:
        assert choice.finish_reason == "stop"  # a named choice
        (call,) = choice.message.tool_calls or []
        assert call.type == "function"
        check_call(call.function.name, json.loads(call.function.arguments))


def test_a_forced_choice_with_structured_outputs_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        calls(client, False, tool_choice="required", response_format={"type": "json_object"})
    assert caught.value.body is not None
    assert caught.value.body["param"] == "tool_choice"  # type: ignore[index]

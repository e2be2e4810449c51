"""Tools as a request declares them (ToolSpec, its forced schema) and a tool history as the
plain turns the chat template renders."""

from __future__ import annotations

import json
from typing import Any

import pytest

from prefixkv.engine.request import InvalidRequestError
from prefixkv.server.errors import APIError
from prefixkv.server.tool_history import system_block, tool_messages
from prefixkv.server.tools import ToolSpec, parse_tools


def _tool(name: str, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if parameters is not None:
        function["parameters"] = parameters
    return {"type": "function", "function": function}


CITY = {"type": "object", "properties": {"city": {"type": "string"}}}


def _spec(**body: Any) -> ToolSpec:
    spec = parse_tools({"tools": [_tool("weather", CITY), _tool("search")], **body})
    assert spec is not None
    return spec


def test_no_tools_is_no_spec() -> None:
    assert parse_tools({}) is None
    assert parse_tools({"tools": [], "tool_choice": "none"}) is None


def test_defaults_are_auto_and_parallel() -> None:
    spec = _spec()
    assert (spec.choice, spec.parallel, spec.names) == ("auto", True, {"weather", "search"})
    assert spec.forced_schema() is None


def test_a_named_choice_narrows_the_names_and_forces_its_schema() -> None:
    spec = _spec(tool_choice={"type": "function", "function": {"name": "weather"}})
    assert spec.names == {"weather"}
    schema = spec.forced_schema()
    assert schema is not None
    assert schema["properties"] == {"name": {"const": "weather"}, "arguments": CITY}


def test_required_forces_one_of_the_functions() -> None:
    schema = _spec(tool_choice="required", parallel_tool_calls=False).forced_schema()
    assert schema is not None
    names = [option["properties"]["name"]["const"] for option in schema["anyOf"]]
    assert names == ["weather", "search"]


def test_the_system_block_lists_each_signature_and_the_choice() -> None:
    block = system_block(_spec(tool_choice="required", parallel_tool_calls=False))
    inside = block.split("<tools>\n")[1].split("\n</tools>")[0]
    signatures = [json.loads(line)["function"]["name"] for line in inside.splitlines()]
    assert signatures == ["weather", "search"]
    assert "You must call at least one function." in block
    assert "Call at most one function." in block


def test_the_block_follows_the_requests_system_message() -> None:
    spec = _spec()
    messages = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    rendered = tool_messages(messages, spec)
    assert rendered[0] == {"role": "system", "content": "Be brief.\n\n" + system_block(spec)}
    assert rendered[1:] == messages[1:]
    alone = tool_messages(messages[1:], spec)
    assert alone == [{"role": "system", "content": system_block(spec)}, *messages[1:]]


def test_past_calls_and_results_become_plain_turns() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "search", "arguments": '{"q":1}'}}
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Looking.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": [{"type": "text", "text": "42"}]},
    ]
    rendered = tool_messages(messages, None)
    assert rendered[1] == {
        "role": "assistant",
        "content": 'Looking.\n<tool_call>\n{"name": "search", "arguments": {"q": 1}}\n</tool_call>',
    }
    assert rendered[2] == {"role": "user", "content": "<tool_response>\n42\n</tool_response>"}
    assert messages[2]["role"] == "tool"  # not mutated


@pytest.mark.parametrize(
    ("message", "param"),
    [
        ({"role": "assistant", "tool_calls": "x"}, "messages[0].tool_calls"),
        (
            {"role": "assistant", "tool_calls": [{"function": 1}]},
            "messages[0].tool_calls[0].function",
        ),
        (
            {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {}}}]},
            "messages[0].tool_calls[0].function.arguments",
        ),
        ({"role": "tool", "content": 5}, "messages[0].content"),
    ],
)
def test_malformed_tool_parts_name_the_field(message: dict[str, Any], param: str) -> None:
    with pytest.raises((APIError, InvalidRequestError)) as caught:
        tool_messages([message], None)
    assert caught.value.param == param


def test_a_forced_schema_rebases_each_functions_local_refs() -> None:
    """Nested under the call's schema, ``#/$defs/x`` must become a pointer into the
    function's own place; references elsewhere stay."""
    parameters = {
        "$defs": {"c": {"type": "string"}},
        "type": "object",
        "properties": {"city": {"$ref": "#/$defs/c"}, "self": {"$ref": "#"},
                       "far": {"$ref": "https://example.com/s.json"}},
    }  # fmt: skip
    tool = {"type": "function", "function": {"name": "f", "parameters": parameters}}
    other = {"type": "function", "function": {"name": "g", "parameters": parameters}}
    one = parse_tools({"tools": [tool], "tool_choice": "required"})
    assert one is not None
    schema = one.forced_schema()
    assert schema is not None
    props = schema["properties"]["arguments"]["properties"]
    assert props["city"] == {"$ref": "#/properties/arguments/$defs/c"}
    assert props["self"] == {"$ref": "#/properties/arguments"}
    assert props["far"] == {"$ref": "https://example.com/s.json"}
    two = parse_tools({"tools": [tool, other], "tool_choice": "required"})
    assert two is not None
    both = two.forced_schema()
    assert both is not None
    second = both["anyOf"][1]["properties"]["arguments"]["properties"]
    assert second["city"] == {"$ref": "#/anyOf/1/properties/arguments/$defs/c"}

"""A chat history with tools, as the plain system/user/assistant turns the chat template
renders (see :mod:`prefixkv.server.tools` for why the Hermes-style form).

- the tools: a system block (merged after the request's own system message, if it has one);
- an assistant message's ``tool_calls``: its content followed by one
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` per call;
- a ``tool`` message: a user turn holding ``<tool_response>...</tool_response>``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from prefixkv.engine.request import wrong_type
from prefixkv.server.errors import APIError
from prefixkv.server.tools import ToolSpec

OPEN, CLOSE = "<tool_call>", "</tool_call>"


def tool_messages(messages: list[dict[str, Any]], tools: ToolSpec | None) -> list[dict[str, Any]]:
    """``messages`` with the tools' system block and the tool parts rendered as plain turns
    (a new list; ``messages`` is not mutated). Raises APIError naming a malformed tool
    part."""
    out = [_plain(message, i) for i, message in enumerate(messages)]
    if tools is None:
        return out
    block = system_block(tools)
    if out and out[0].get("role") in ("system", "developer") and isinstance(out[0]["content"], str):
        return [{"role": "system", "content": f"{out[0]['content']}\n\n{block}"}, *out[1:]]
    return [{"role": "system", "content": block}, *out]


def system_block(tools: ToolSpec) -> str:
    """The instructions and signatures the model sees (the same for the same tools)."""
    signatures = "\n".join(
        json.dumps({"type": "function", "function": f.signature()}, ensure_ascii=False)
        for f in tools.functions
    )
    lines = [
        "You may call functions to help answer. Their signatures, as JSON, are inside "
        "<tools></tools>:",
        f"<tools>\n{signatures}\n</tools>",
        'To call a function, write a JSON object with its "name" and its "arguments" inside '
        f"{OPEN}{CLOSE} tags, one call per pair of tags:",
        f'{OPEN}\n{{"name": "function name", "arguments": {{"argument": "value"}}}}\n{CLOSE}',
    ]
    if tools.choice == "required":
        lines.append("You must call at least one function.")
    elif tools.choice == "function":
        lines.append(f"You must call the function {tools.forced}.")
    if not tools.parallel:
        lines.append("Call at most one function.")
    return "\n".join(lines)


def _plain(message: dict[str, Any], i: int) -> dict[str, Any]:
    role = message.get("role")
    if role == "tool":
        return {
            "role": "user",
            "content": f"<tool_response>\n{_text(message, i)}\n</tool_response>",
        }
    if role != "assistant" or message.get("tool_calls") is None:
        return message
    calls = message["tool_calls"]
    if not isinstance(calls, list):
        raise wrong_type(f"messages[{i}].tool_calls", "a list of tool calls", calls)
    parts = [] if message.get("content") is None else [_text(message, i)]
    parts += [_call(call, f"messages[{i}].tool_calls[{j}]") for j, call in enumerate(calls)]
    return {"role": "assistant", "content": "\n".join(parts)}


def _call(call: object, where: str) -> str:
    if not isinstance(call, dict):
        raise wrong_type(where, "an object", call)
    function = call.get("function")
    if not isinstance(function, dict):
        raise wrong_type(f"{where}.function", "an object", function)
    name, arguments = function.get("name"), function.get("arguments")
    if not isinstance(name, str):
        raise wrong_type(f"{where}.function.name", "a string", name)
    if not isinstance(arguments, str):
        raise wrong_type(f"{where}.function.arguments", "a JSON string", arguments)
    try:
        parsed = json.loads(arguments)
    except json.JSONDecodeError as exc:
        raise APIError.invalid(
            f"{where}.function.arguments is not valid JSON: {exc}", f"{where}.function.arguments"
        ) from None
    text = json.dumps({"name": name, "arguments": parsed}, ensure_ascii=False)
    return f"{OPEN}\n{text}\n{CLOSE}"


def _text(message: Mapping[str, Any], i: int) -> str:
    """The message's content as text (a string or OpenAI's text parts)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    raise wrong_type(f"messages[{i}].content", "a string or a list of text parts", content)

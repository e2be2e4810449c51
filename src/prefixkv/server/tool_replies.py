"""Parsed tool calls in OpenAI's chat shapes: the message of a whole answer, and the stream's
deltas. A call's first delta carries its index, id, type, name and empty arguments; later
ones carry pieces of its arguments, which is how OpenAI's clients accumulate them. Under a
forcing ``tool_choice`` the pieces go out as the model writes them
(:mod:`prefixkv.server.tool_fragments`); under ``auto`` a call goes out once its block
closes, its arguments in one piece. Content is the text outside calls, null when there is
none.

The finish reason is OpenAI's and vLLM's: ``tool_calls`` when the answer holds calls and
ended by itself (``stop``), unless a named ``tool_choice`` forced the call (then ``stop``);
otherwise the engine's reason, so a reply cut at max_tokens says ``length`` whatever calls
it holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefixkv.server.tool_calls import (
    ArgumentsPiece,
    CallScanner,
    CallStart,
    Event,
    Text,
    ToolCall,
    calls_of,
    scan,
)
from prefixkv.server.tool_fragments import ForcedCallScanner
from prefixkv.server.tools import ToolSpec


def scanner_for(tools: ToolSpec | None) -> CallScanner | None:
    """A scanner for the request's answer; None when nothing is to be parsed (no tools, or
    ``tool_choice: "none"``)."""
    if tools is None or tools.choice == "none":
        return None
    if tools.choice == "auto":
        return CallScanner(tools.names, tools.parallel)
    return ForcedCallScanner(tools.names, tools.parallel)


def with_calls(body: dict[str, Any], tools: ToolSpec | None) -> dict[str, Any]:
    """``body`` (a chat completion) with each choice's message text parsed for calls (none
    when :func:`scanner_for` gives no scanner); returns a new body, ``body`` is not
    mutated."""
    if scanner_for(tools) is None:
        return body
    choices = []
    for choice in body["choices"]:
        scanner = scanner_for(tools)
        assert tools is not None and scanner is not None
        choices.append(_with_calls(choice, scanner, tools))
    return {**body, "choices": choices}


def _with_calls(choice: dict[str, Any], scanner: CallScanner, tools: ToolSpec) -> dict[str, Any]:
    events = scan(choice["message"]["content"], scanner)
    calls = calls_of(events)
    if not calls:
        return choice
    text = "".join(e.text for e in events if isinstance(e, Text))
    message = {
        **choice["message"],
        "content": text or None,
        "tool_calls": [c.message_part() for c in calls],
    }
    reason = finish_reason(tools, scanner, choice["finish_reason"])
    return {**choice, "message": message, "finish_reason": reason}


def finish_reason(tools: ToolSpec, scanner: CallScanner, engine_reason: str) -> str:
    """The answer's finish reason (see the module's docstring)."""
    called = scanner.calls and tools.choice != "function"
    return "tool_calls" if called and engine_reason == "stop" else engine_reason


def deltas(events: Sequence[Event]) -> list[dict[str, Any]]:
    """The chat ``delta`` objects of ``events``, in order (one per event, two for a whole
    call: its head, then its arguments)."""
    out: list[dict[str, Any]] = []
    for event in events:
        if isinstance(event, Text):
            out.append({"content": event.text})
        elif isinstance(event, ArgumentsPiece):
            out.append(_piece(event.index, event.text))
        elif isinstance(event, CallStart):
            out.append(_head(event))
        else:
            out += [_head(event), _piece(event.index, event.arguments)]
    return out


def _head(call: CallStart | ToolCall) -> dict[str, Any]:
    function = {"name": call.name, "arguments": ""}
    return {
        "tool_calls": [
            {"index": call.index, "id": call.id, "type": "function", "function": function}
        ]
    }


def _piece(index: int, text: str) -> dict[str, Any]:
    return {"tool_calls": [{"index": index, "function": {"arguments": text}}]}

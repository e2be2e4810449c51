"""Parsed tool calls in OpenAI's chat shapes: the message of a whole answer, and the stream's
deltas (a call goes out, once its block closes, as a delta with its index, id, type and name
and empty arguments, then one with its arguments, which is how OpenAI's clients accumulate
them). An answer with calls finishes with ``tool_calls``; content is the text outside them,
null when there is none.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefixkv.server.tool_calls import CallScanner, Event, Text, ToolCall, scan
from prefixkv.server.tools import ToolSpec


def scanner_for(tools: ToolSpec | None) -> CallScanner | None:
    """A scanner for the request's answer; None when nothing is to be parsed (no tools, or
    ``tool_choice: "none"``)."""
    if tools is None or tools.choice == "none":
        return None
    return CallScanner(tools.names, tools.parallel)


def with_calls(body: dict[str, Any], tools: ToolSpec | None) -> dict[str, Any]:
    """``body`` (a chat completion) with each choice's message text parsed for calls (none
    when :func:`scanner_for` gives no scanner); returns a new body, ``body`` is not
    mutated."""
    if scanner_for(tools) is None:
        return body
    choices = []
    for choice in body["choices"]:
        scanner = scanner_for(tools)
        assert scanner is not None
        choices.append(_with_calls(choice, scanner))
    return {**body, "choices": choices}


def _with_calls(choice: dict[str, Any], scanner: CallScanner) -> dict[str, Any]:
    events = scan(choice["message"]["content"], scanner)
    calls = [e for e in events if isinstance(e, ToolCall)]
    if not calls:
        return choice
    text = "".join(e.text for e in events if isinstance(e, Text))
    message = {
        **choice["message"],
        "content": text or None,
        "tool_calls": [c.message_part() for c in calls],
    }
    return {**choice, "message": message, "finish_reason": "tool_calls"}


def finish_reason(scanner: CallScanner, engine_reason: str) -> str:
    """``tool_calls`` once the answer holds a call, else the engine's reason."""
    return "tool_calls" if scanner.calls else engine_reason


def deltas(events: Sequence[Event]) -> list[dict[str, Any]]:
    """The chat ``delta`` objects of ``events``, in order (one or two per event)."""
    out: list[dict[str, Any]] = []
    for event in events:
        if isinstance(event, Text):
            out.append({"content": event.text})
            continue
        head = {
            "index": event.index,
            "id": event.id,
            "type": "function",
            "function": {"name": event.name, "arguments": ""},
        }
        tail = {"index": event.index, "function": {"arguments": event.arguments}}
        out += [{"tool_calls": [head]}, {"tool_calls": [tail]}]
    return out

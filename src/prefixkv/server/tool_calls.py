"""The model's Hermes-style tool calls (``<tool_call>{"name": ..., "arguments": {...}}
</tool_call>``) parsed out of its text, incrementally, so that streaming and not give the
same calls wherever the text is cut into deltas.

A block is a call when its JSON is an object with a string ``name`` the request allows and an
object ``arguments`` (absent means ``{}``), whose text the call carries as the model wrote it
(so that arguments streamed in pieces, :mod:`prefixkv.server.tool_fragments`, add up to it);
anything else (bad JSON, an unknown name, a call
past the first when ``parallel_tool_calls`` is false, a block left open at the end) stays in
the text, verbatim. ``</tool_call>`` inside a JSON string does not close a block. Text
between calls (or before the first, after the last) that is only whitespace is dropped when
there are calls; other text is the message's content, verbatim.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefixkv.server.tool_history import CLOSE, OPEN


@dataclass(frozen=True)
class ToolCall:
    """One parsed call; ``arguments`` is the JSON text of an object."""

    index: int
    id: str
    name: str
    arguments: str

    def message_part(self) -> dict[str, Any]:
        """The call as an assistant message's ``tool_calls`` entry."""
        function = {"name": self.name, "arguments": self.arguments}
        return {"id": self.id, "type": "function", "function": function}


@dataclass(frozen=True)
class Text:
    """Text outside calls, to deliver as content."""

    text: str


@dataclass(frozen=True)
class CallStart:
    """A call whose arguments follow in pieces (:mod:`prefixkv.server.tool_fragments`)."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ArgumentsPiece:
    """The next piece of call ``index``'s arguments text."""

    index: int
    text: str


Event = Text | ToolCall | CallStart | ArgumentsPiece


def new_call_id() -> str:
    return "call_" + uuid.uuid4().hex[:24]


class CallScanner:
    """Feeds on the model's text deltas; yields content and complete calls in order.

    ``names``: the function names a call may carry; ``parallel``: more than one call
    allowed; ``ids``: makes each call's id.
    """

    def __init__(
        self, names: frozenset[str], parallel: bool, ids: Callable[[], str] = new_call_id
    ) -> None:
        self.names, self.parallel, self.ids = names, parallel, ids
        self.calls = 0
        self._buf = ""  # text not yet decided on
        self._inside = False  # _buf follows an OPEN
        self._searched = 0  # inside: _buf[:_searched] holds no usable CLOSE
        self._blank = ""  # whitespace-only text held: dropped if a call follows
        self._said = False  # text since the last call holds more than whitespace

    def feed(self, text: str) -> list[Event]:
        """Events that ``text`` (the next delta) completes. Mutates the scanner."""
        self._buf += text
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def finish(self) -> list[Event]:
        """Events for what is left once the text ends (an open block becomes text)."""
        rest = OPEN + self._buf if self._inside else self._buf
        self._buf, self._inside = "", False
        events: list[Event] = []
        self._outside(rest, events)
        if self._blank and not self.calls:
            events.append(Text(self._blank))
        self._blank = ""
        return events

    def _step(self, events: list[Event]) -> bool:
        """Decide on a prefix of the buffer; False when it needs more text."""
        if not self._inside:
            at = self._buf.find(OPEN)
            if at < 0:
                keep = _partial_suffix(self._buf, OPEN)
                self._outside(self._buf[: len(self._buf) - keep], events)
                self._buf = self._buf[len(self._buf) - keep :]
                return False
            self._outside(self._buf[:at], events)
            self._buf, self._inside, self._searched = self._buf[at + len(OPEN) :], True, 0
            return True
        return self._inside_step(events)

    def _inside_step(self, events: list[Event]) -> bool:
        """Decide on a prefix of a block's buffer: the whole block once its CLOSE is in."""
        at = self._buf.find(CLOSE, self._searched)
        if at < 0:
            self._searched = max(0, len(self._buf) - len(CLOSE) + 1)
            return False
        body = self._buf[:at]
        if _open_string(body):  # this CLOSE is inside a JSON string
            self._searched = at + 1
            return True
        self._buf, self._inside = self._buf[at + len(CLOSE) :], False
        call = self._call(body)
        if call is None:
            self._outside(OPEN + body + CLOSE, events)
        else:
            self._blank, self._said = "", False
            events.append(call)
        return True

    def _outside(self, text: str, events: list[Event]) -> None:
        """Text outside calls: while the text since the last call is only whitespace, it
        waits to see whether a call follows."""
        if not text:
            return
        if not self._said and text.isspace():
            self._blank += text
            return
        events.append(Text(self._blank + text))
        self._blank, self._said = "", True

    def _call(self, body: str) -> ToolCall | None:
        if self.calls and not self.parallel:
            return None
        try:
            parsed = json.loads(body)
        except ValueError:
            return None
        if not isinstance(parsed, dict) or parsed.get("name") not in self.names:
            return None
        if not isinstance(parsed.get("arguments", {}), dict):
            return None
        call = ToolCall(self.calls, self.ids(), parsed["name"], _arguments_text(body))
        self.calls += 1
        return call


def scan(text: str, scanner: CallScanner) -> list[Event]:
    """All of ``text`` through ``scanner`` at once (what a non-streamed answer uses)."""
    return scanner.feed(text) + scanner.finish()


def calls_of(events: list[Event]) -> list[ToolCall]:
    """The whole calls of ``events``: a CallStart with the ArgumentsPieces of its index
    joined, a ToolCall as it is; in index order."""
    calls: dict[int, ToolCall] = {}
    for event in events:
        if isinstance(event, ToolCall):
            calls[event.index] = event
        elif isinstance(event, CallStart):
            calls[event.index] = ToolCall(event.index, event.id, event.name, "")
        elif isinstance(event, ArgumentsPiece):
            call = calls[event.index]
            calls[event.index] = ToolCall(
                call.index, call.id, call.name, call.arguments + event.text
            )
    return [calls[i] for i in sorted(calls)]


def _arguments_text(body: str) -> str:
    """The text of the ``arguments`` member of ``body`` (a JSON object that parses), as
    written; the last one when it is repeated (as ``json.loads`` reads it); ``{}`` when
    absent."""
    decoder = json.JSONDecoder()
    at = _skip_space(body, _skip_space(body, 0) + 1)  # past "{"
    found = "{}"
    while body[at] != "}":
        key, at = decoder.raw_decode(body, at)
        start = _skip_space(body, _skip_space(body, at) + 1)  # past ":"
        _, at = decoder.raw_decode(body, start)
        if key == "arguments":
            found = body[start:at]
        at = _skip_space(body, at)
        at = _skip_space(body, at + 1) if body[at] == "," else at
    return found


def _skip_space(text: str, at: int) -> int:
    """The first index from ``at`` that is not JSON whitespace."""
    while text[at] in " \t\n\r":
        at += 1
    return at


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that begins ``marker`` (it may continue)."""
    for size in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-size:]):
            return size
    return 0


def _open_string(body: str) -> bool:
    """True when ``body`` ends inside a JSON string (an unescaped quote is unmatched)."""
    inside = escaped = False
    for char in body:
        if escaped:
            escaped = False
        elif char == "\\" and inside:
            escaped = True
        elif char == '"':
            inside = not inside
    return inside

"""Tool calls whose arguments stream in pieces, as OpenAI and vLLM stream them: the call's
name as soon as the block states it, then its arguments text as the model writes it.

Used when the grammar forces calls (``tool_choice`` ``required`` or named,
:mod:`prefixkv.server.tool_grammar`), whose blocks are written ``{"name": ..., "arguments":
{...}}``, name first, with arguments that follow the function's schema: once a block's text
is ``{"name": "<allowed>", "arguments": {`` the call is certain, so it goes out (a
CallStart), and every later character of the arguments object goes out as it arrives (an
ArgumentsPiece) up to the brace that closes it; what follows that brace in the block (its
``}``) is not part of the call. A block cut before its arguments close (max_tokens) stays a
call with the arguments written so far, as OpenAI answers a call cut by ``length``; one cut
before its head is complete is text, as in :class:`~prefixkv.server.tool_calls.CallScanner`,
and so is a block whose head is not of that form (it is then judged whole at its close).

Under ``auto`` the reply is not masked: a block that opens like a call may still hold bad
JSON or arguments of another type, and must then be delivered as text; a piece already sent
as a call cannot be taken back, so ``auto`` keeps CallScanner's whole call at the close.

The non-streamed answer runs the same scanner over the whole text, so for any cut of the
text into deltas the pieces of a call add up to the whole answer's arguments.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass

from prefixkv.server.tool_calls import (
    ArgumentsPiece,
    CallScanner,
    CallStart,
    Event,
    new_call_id,
)
from prefixkv.server.tool_history import CLOSE

# A block's head up to the brace that opens its arguments (JSON whitespace allowed).
_HEAD = re.compile(r'[ \t\n\r]*\{[ \t\n\r]*"name"[ \t\n\r]*:[ \t\n\r]*("(?:[^"\\]|\\.)*")'
                   r'[ \t\n\r]*,[ \t\n\r]*"arguments"[ \t\n\r]*:[ \t\n\r]*(?=\{)')  # fmt: skip


@dataclass
class _Depth:
    """Where the arguments text read so far stands: nesting depth outside strings."""

    depth: int = 0
    in_string: bool = False
    escaped: bool = False

    def read(self, text: str) -> int | None:
        """Reads ``text``; the length of it that ends the value (the closing brace
        included), or None when the value is still open after it all."""
        for at, char in enumerate(text):
            if self.escaped:
                self.escaped = False
            elif self.in_string:
                self.escaped = char == "\\"
                self.in_string = char != '"'
            elif char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return at + 1
        return None


class ForcedCallScanner(CallScanner):
    """A CallScanner whose calls of the head form above stream their arguments."""

    def __init__(
        self, names: frozenset[str], parallel: bool, ids: Callable[[], str] = new_call_id
    ) -> None:
        super().__init__(names, parallel, ids)
        self._index: int | None = None  # the call streaming in this block
        self._value: _Depth | None = None  # its arguments, while open

    def finish(self) -> list[Event]:
        if self._index is not None:  # cut inside a started call: it stays a call
            self._buf, self._inside, self._index, self._value = "", False, None, None
        return super().finish()

    def _inside_step(self, events: list[Event]) -> bool:
        if self._index is None:
            return self._start(events) or super()._inside_step(events)
        if self._value is not None:
            return self._arguments(events)
        at = self._buf.find(CLOSE)  # past the arguments: JSON without strings, then CLOSE
        if at < 0:
            return False
        self._buf, self._inside, self._index = self._buf[at + len(CLOSE) :], False, None
        return True

    def _start(self, events: list[Event]) -> bool:
        """Starts the block's call when its head is in and allows it; False otherwise."""
        head = _HEAD.match(self._buf)
        if head is None or (self.calls and not self.parallel):
            return False
        name = json.loads(head.group(1))
        if name not in self.names:
            return False
        self._index, self._value = self.calls, _Depth()
        self.calls += 1
        self._blank, self._said = "", False
        events.append(CallStart(self._index, self.ids(), name))
        self._buf = self._buf[head.end() :]
        return True

    def _arguments(self, events: list[Event]) -> bool:
        """Sends what the buffer holds of the arguments; True once they are closed."""
        assert self._index is not None and self._value is not None
        end = self._value.read(self._buf)
        piece = self._buf if end is None else self._buf[:end]
        if piece:
            events.append(ArgumentsPiece(self._index, piece))
        self._buf = self._buf[len(piece) :]
        if end is None:
            return False
        self._value = None
        return True

"""Incremental detokenization with stop strings, for streaming."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class TextStream:
    """Turns a growing list of token ids into text deltas, never splitting a character and
    never emitting text that a stop string might still claim.

    ``push`` returns the new safe text; ``stopped`` turns True once a stop string appeared
    (the text is cut before it); ``finish`` flushes what was held back.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str]) -> None:
        self._tokenizer = tokenizer
        self._stop = tuple(stop)
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._ids: list[int] = []
        self._emitted = 0
        self.text = ""
        self.stopped = False

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        text = self._tokenizer.decode(self._ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for more bytes
            return ""
        self.text = text
        for stop in self._stop:
            cut = text.find(stop, max(0, self._emitted - len(stop)))
            if cut != -1:
                self.stopped = True
                self.text = text[:cut]
                return self._emit(len(self.text))
        return self._emit(max(self._emitted, len(text) - self._hold))

    def finish(self) -> str:
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        delta = self.text[self._emitted : upto]
        self._emitted = max(self._emitted, upto)
        return delta

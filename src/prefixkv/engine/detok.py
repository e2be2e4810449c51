"""Incremental detokenization with stop strings, for streaming: bounded work per token.

Decoding the whole output again at every token costs O(n) per token, O(n^2) per request, on
the runner thread that steps every running request. Here each token decodes only the few
ids since the last complete character, plus those of the last piece of text as context (the
context is what makes a piece's leading space, or a byte-fallback character, come out as in
a full decoding):

- a fast tokenizer (one with a ``tokenizers.Tokenizer`` backend) goes through that library's
  incremental decoder, ``DecodeStream`` (:class:`FastDecoder`);
- any other tokenizer through the same scheme in Python over its ``decode``
  (:class:`WindowDecoder`).

Spaces are never cleaned up (``clean_up_tokenization_spaces``, which turns ``"a ,"`` into
``"a,"``): a cleanup can remove a space already sent, once the next token arrives, and text
sent cannot be taken back (``DecodeStream`` does not clean up either). Generated text is
therefore ``tokenizer.decode(ids, skip_special_tokens=True,
clean_up_tokenization_spaces=False)``, streamed or not.

The text equals that decoding whenever decoding a
prefix of the ids gives a prefix of the text (byte-level BPE as SmolLM2's, SentencePiece
with byte fallback), except that a trailing incomplete UTF-8 sequence is held back, and
dropped if the output ends there. Where it does not (ByteFallback over invalid bytes shows a
valid byte as U+FFFD once an invalid one follows), text already sent stays as it was.

A run of more than ``MAX_RUN`` tokens without a complete character (special tokens that
decode to nothing, bytes that never form a character) is given up on: its tokens are
dropped, so that no step ever decodes more than about ``2 * MAX_RUN`` ids.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream

MAX_RUN = 32
"""Most tokens waited on for a complete character (a UTF-8 character is at most 4 bytes)."""

INCOMPLETE = "\ufffd"
"""What a decoder shows for bytes that do not (yet) form a character."""


class IncrementalDecoder(Protocol):
    def step(self, token_id: int) -> str:
        """Take the next id; return the text it completes ("" while a character is still
        incomplete, or for a special token)."""
        ...


class FastDecoder:
    """``DecodeStream`` over a fast tokenizer's backend, special tokens skipped."""

    def __init__(self, backend: Tokenizer) -> None:
        self._backend = backend
        self._stream = DecodeStream(skip_special_tokens=True)
        self._last: list[int] = []  # the id that gave the latest text: context for a restart
        self._waiting: list[int] = []  # the ids since, not yet text

    def step(self, token_id: int) -> str:
        try:
            chunk = self._stream.step(self._backend, token_id)
        except Exception:  # what tokenizers raises: a bare Exception
            # DecodeStream refuses to go on when the text of earlier ids changed: ByteFallback
            # turns a valid byte into U+FFFD once an invalid one follows it. Text already
            # sent stays; the waiting ids are decoded afresh, without context.
            self._stream = DecodeStream(skip_special_tokens=True)
            chunk = self._stream.step(self._backend, [*self._waiting, token_id])
        if chunk:
            self._last, self._waiting = [token_id], []
            return str(chunk)
        self._waiting.append(token_id)
        if len(self._waiting) > MAX_RUN:  # DecodeStream would keep decoding the whole run
            self._stream = DecodeStream(self._last, skip_special_tokens=True)
            self._waiting = []
        return ""


class WindowDecoder:
    """The incremental scheme over any ``decode(ids) -> str``: ``ids`` holds the context
    (the ids of the latest text, ``ids[:read]``, which decode to ``prefix``) and the ids
    since; each step decodes ``ids`` and returns what follows ``prefix``, once it ends in a
    complete character. Every step decodes at most ``2 * MAX_RUN + 1`` ids."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._read = 0
        self._prefix = ""

    def step(self, token_id: int) -> str:
        self._ids.append(token_id)
        text = self._decode(self._ids)
        if len(text) > len(self._prefix) and not text.endswith(INCOMPLETE):
            if text.startswith(self._prefix):
                chunk = text[len(self._prefix) :]
            else:  # the context's text changed (as in FastDecoder): the waiting ids afresh
                chunk = self._decode(self._ids[self._read :])
            self._ids = self._ids[self._read :]  # the new text's ids become the context
            self._read = len(self._ids)
            self._prefix = self._decode(self._ids)
            return chunk
        if len(self._ids) - self._read > MAX_RUN:
            del self._ids[self._read :]  # give up on the run; the context stays
        return ""


def incremental_decoder(tokenizer: Any) -> IncrementalDecoder:
    """The decoder for ``tokenizer`` (a transformers tokenizer, or a ``tokenizers.Tokenizer``):
    :class:`FastDecoder` where it has a fast backend, else :class:`WindowDecoder` over
    ``tokenizer.decode`` (special tokens skipped, spaces not cleaned up)."""
    backend = tokenizer if isinstance(tokenizer, Tokenizer) else None
    backend = backend or getattr(tokenizer, "backend_tokenizer", None)
    if isinstance(backend, Tokenizer):
        return FastDecoder(backend)
    return WindowDecoder(
        lambda ids: str(
            tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        )
    )


class TextStream:
    """Turns a growing list of token ids into text deltas, never splitting a character and
    never emitting text that a stop string might still claim.

    ``push`` returns the new safe text; ``stopped`` turns True once a stop string appeared
    (the text is cut before the earliest one); ``finish`` flushes what was held back;
    ``text`` is all of it so far. Work per token: one decoder step, and a search of the
    held-back text (shorter than the longest stop string) plus the new piece.
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str]) -> None:
        self._decoder = incremental_decoder(tokenizer)
        self._stop = tuple(stop)
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._sent: list[str] = []  # the deltas returned so far
        self._held = ""  # text after them: a stop string may still start in it
        self.stopped = False

    @property
    def text(self) -> str:
        """The text so far, emitted and held back (cut before a stop string). O(length)."""
        return "".join(self._sent) + self._held

    def push(self, token_id: int) -> str:
        """Decode one more id; return the text now safe to send (may be ""). After a stop
        string, further ids are ignored."""
        if self.stopped:
            return ""
        # A stop string cannot start in text already sent: the hold kept back the last
        # ``len(longest stop) - 1`` characters, so one starting earlier was found earlier.
        held = self._held + self._decoder.step(token_id)
        cuts = [cut for cut in (held.find(s) for s in self._stop) if cut != -1]
        if cuts:
            self.stopped = True
            held = held[: min(cuts)]
            return self._send(held, len(held))
        return self._send(held, max(0, len(held) - self._hold))

    def finish(self) -> str:
        """Everything held back (the request ended)."""
        return self._send(self._held, len(self._held))

    def _send(self, held: str, upto: int) -> str:
        delta, self._held = held[:upto], held[upto:]
        if delta:
            self._sent.append(delta)
        return delta

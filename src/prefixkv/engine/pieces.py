"""Token pieces: each token id's text as the tokenizer decodes it alone, and its own bytes,
for reporting log-probabilities (OpenAI's ``token`` and ``bytes``).

A token's bytes are its text's UTF-8 encoding, except for a token that holds part of a
character (its text alone is U+FFFD): then its bytes come from its vocabulary string, read
as byte-level BPE's byte alphabet (GPT-2, SmolLM2, Qwen) or as a SentencePiece byte-fallback
piece ``<0xE2>``. Pieces are kept per tokenizer once seen (a vocabulary's worth at most).
"""

from __future__ import annotations

import re
import threading
import weakref
from typing import Any

from prefixkv.engine.detok import INCOMPLETE

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _byte_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2's table), inverted."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0x100)]
    chars = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return {c: b for b, c in chars.items()}


_ALPHABET = _byte_alphabet()


class Pieces:
    """``piece(id)`` -> ``(text, bytes)`` for one tokenizer; thread-safe."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._known: dict[int, tuple[str, bytes]] = {}
        self._lock = threading.Lock()

    def piece(self, token_id: int) -> tuple[str, bytes]:
        found = self._known.get(token_id)
        if found is None:
            found = self._read(token_id)
            with self._lock:
                self._known[token_id] = found
        return found

    def _read(self, token_id: int) -> tuple[str, bytes]:
        text = str(
            self._tokenizer.decode(
                [token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
        )
        if INCOMPLETE not in text:
            return text, text.encode()
        name = self._tokenizer.convert_ids_to_tokens(token_id)
        if isinstance(name, str):
            if match := _BYTE_PIECE.fullmatch(name):
                return text, bytes([int(match.group(1), 16)])
            if name and all(c in _ALPHABET for c in name):
                return text, bytes(_ALPHABET[c] for c in name)
        return text, text.encode()


_BY_TOKENIZER: weakref.WeakKeyDictionary[Any, Pieces] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()


def pieces_of(tokenizer: Any) -> Pieces:
    """The one Pieces of ``tokenizer`` (made at the first call)."""
    with _LOCK:
        pieces = _BY_TOKENIZER.get(tokenizer)
        if pieces is None:
            pieces = _BY_TOKENIZER[tokenizer] = Pieces(tokenizer)
        return pieces

"""Grammar masks: structured outputs (JSON, a JSON schema, a regex, a choice, a Lark grammar)
enforced token by token through llguidance (the ``grammar`` extra).

A request's :class:`~prefixkv.engine.request.GrammarSpec` is compiled once per distinct spec
and tokenizer (:class:`Grammars`, an LRU of compiled matchers, filled by ``Intake.request``
on the server's preparation thread, so never on the step loop); each sequence then gets a
copy of the compiled matcher (:class:`GrammarMask`), a logits processor that sets the logits
of every token the grammar forbids to ``-inf`` and advances the matcher with each chosen
token. Only sequences that asked for a grammar carry one.

The tokenizer llguidance sees is made from the token pieces the logprobs already use
(:mod:`prefixkv.engine.pieces`): each id's bytes, special tokens marked as such (so no
grammar can spell them as text), end-of-sequence ids as the grammar's end.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from prefixkv.engine import bitmask
from prefixkv.engine.pieces import pieces_of
from prefixkv.engine.request import GrammarSpec, InvalidRequestError
from prefixkv.extras import require

CACHED_GRAMMARS = 64  # compiled matchers kept per tokenizer (a few KB to a few MB each)


def _library() -> Any:
    """The llguidance module; raises InvalidRequestError (param ``response_format``, the
    message the pip command) when the ``grammar`` extra is absent."""
    try:
        require("grammar", "structured outputs")
        import llguidance
    except ImportError as exc:  # MissingExtraError, or a module that is there but broken
        raise InvalidRequestError(str(exc), "response_format", "unsupported_parameter") from None
    return llguidance


class _Vocabulary:
    """What llguidance's TokenizerWrapper reads: each id's bytes (special tokens as
    ``0xFF`` + name, llguidance's marking), the special ids, the end id, and an encoder."""

    def __init__(self, tokenizer: Any) -> None:
        pieces = pieces_of(tokenizer)
        special = set(tokenizer.all_special_ids) | {
            i for i, added in tokenizer.added_tokens_decoder.items() if added.special
        }
        size = len(tokenizer)
        self.tokens = [
            b"\xff" + pieces.piece(i)[0].encode() if i in special else pieces.piece(i)[1]
            for i in range(size)
        ]
        self.special_token_ids = sorted(special)
        self.eos_token_id = tokenizer.eos_token_id
        self.bos_token_id = tokenizer.bos_token_id
        self._tokenizer = tokenizer

    def __call__(self, text: str) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=False))


class Grammars:
    """Compiled grammars for one tokenizer (thread-safe): ``mask(spec)`` gives a sequence
    its own matcher, copied from the one compiled for ``spec``."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._lib: Any = None
        self._lltokenizer: Any = None
        self._compiled: OrderedDict[GrammarSpec, Any] = OrderedDict()
        self._lock = threading.Lock()  # guards _compiled
        self._building = threading.Lock()  # guards _lib and _lltokenizer

    def compile(self, spec: GrammarSpec) -> Any:
        """The compiled matcher of ``spec`` (cached; the first call for a tokenizer also
        builds llguidance's tokenizer, about a second for a 49k vocabulary). Raises
        InvalidRequestError naming ``spec.param`` for a spec that does not compile, or
        ``response_format`` when the extra is not installed."""
        with self._lock:
            found = self._compiled.get(spec)
            if found is not None:
                self._compiled.move_to_end(spec)
                return found
        # Built outside the lock: the runner thread's cache hits never wait on a compile.
        matcher = self._build(spec)
        with self._lock:
            self._compiled[spec] = matcher
            if len(self._compiled) > CACHED_GRAMMARS:
                self._compiled.popitem(last=False)
        return matcher

    def mask(self, spec: GrammarSpec) -> GrammarMask:
        """A fresh GrammarMask for one sequence; raises as :meth:`compile`."""
        matcher = self.compile(spec).deep_copy()
        return GrammarMask(matcher, self._lltokenizer.vocab_size)

    def _build(self, spec: GrammarSpec) -> Any:
        with self._building:  # llguidance's tokenizer, made once
            if self._lltokenizer is None:
                self._lib = _library()
                wrapper = self._lib.TokenizerWrapper(_Vocabulary(self._tokenizer))
                self._lltokenizer = self._lib.LLTokenizer(wrapper)
        lib = self._lib.LLMatcher
        try:
            grammar = _grammar_text(lib, spec)
        except ValueError as exc:
            raise InvalidRequestError(f"{spec.param}: {exc}", spec.param) from None
        matcher = lib(self._lltokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise InvalidRequestError(
                f"{spec.param} does not compile: {matcher.get_error()}", spec.param
            )
        return matcher


def _grammar_text(lib: Any, spec: GrammarSpec) -> str:
    """llguidance's grammar for ``spec``; raises ValueError for a malformed schema."""
    if spec.kind == "json_schema":
        # Compact JSON (no whitespace between tokens): a model cannot spend its tokens on
        # blank space, and what it writes is what json.dumps(separators=(",", ":")) writes.
        return str(lib.grammar_from_json_schema(spec.source, {"whitespace_flexible": False}))
    if spec.kind == "regex":
        return str(lib.grammar_from_regex(spec.source))
    return str(lib.grammar_from_lark(spec.source))  # "lark" (a choice is made one)


class GrammarMask:
    """One sequence's matcher as a logits processor: ``__call__`` masks the ``[vocab]``
    logits to the tokens the grammar allows next; ``accept`` advances the matcher.
    ``finished``: the grammar is complete and allows nothing more (the reply ends)."""

    def __init__(self, matcher: Any, vocab: int) -> None:
        self._matcher = matcher
        self._bitmask = np.zeros((vocab + 31) // 32, dtype=np.int32)  # [words], bit i: id i

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        # llguidance fills the bitmask from its token trie (it drops the GIL meanwhile);
        # applying it is :mod:`prefixkv.engine.bitmask`'s (why numpy: see there).
        self._matcher.unsafe_compute_mask_ptr(self._bitmask.ctypes.data, self._bitmask.nbytes)
        return bitmask.apply_bitmask(logits, self._bitmask)

    def accept(self, token: int) -> None:
        self._matcher.consume_token(token)

    @property
    def finished(self) -> bool:
        return bool(self._matcher.is_stopped())


def grammars_of(tokenizer: Any) -> Grammars:
    """The one Grammars of ``tokenizer`` (made at the first call)."""
    with _LOCK:
        grammars = _BY_TOKENIZER.get(tokenizer)
        if grammars is None:
            grammars = _BY_TOKENIZER[tokenizer] = Grammars(tokenizer)
        return grammars


_BY_TOKENIZER: weakref.WeakKeyDictionary[Any, Grammars] = weakref.WeakKeyDictionary()
_LOCK = threading.Lock()

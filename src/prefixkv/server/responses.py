"""OpenAI response bodies and stream chunks, for chat and for text completions.

The two APIs differ in names, in where the text goes (``message``/``delta`` against
``text``) and in how log-probabilities are laid out (chat: a list of per-token objects with
bytes; completions: parallel lists with text offsets), so each is a small Shape object and
everything else is shared. ``logprobs`` None means the request asked for none (the field is
then JSON null); a tuple holds the TokenLogprobs of the tokens in that body or chunk.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from prefixkv.engine.engine import Completion
from prefixkv.engine.logprob_records import Candidate, TokenLogprob

Logprobs = Sequence[TokenLogprob] | None


@dataclass(frozen=True)
class ResponseMeta:
    """What every body and chunk of one response repeats."""

    id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))


class Shape(Protocol):
    """Where one API puts the generated text and its log-probabilities."""

    @property
    def object(self) -> str: ...

    @property
    def chunk_object(self) -> str: ...

    @property
    def id_prefix(self) -> str: ...

    def choice(self, text: str, finish_reason: str, logprobs: Logprobs) -> dict[str, Any]: ...

    def opening(self) -> dict[str, Any] | None:
        """The first streamed choice, sent when the first token exists; None for no such."""
        ...

    def delta(
        self, text: str, finish_reason: str | None, logprobs: Logprobs, offset: int
    ) -> dict[str, Any]:
        """One streamed choice; ``offset``: characters of token text reported before it
        (where the completions API's ``text_offset`` continues)."""
        ...


@dataclass(frozen=True)
class ChatShape:
    object: str = "chat.completion"
    chunk_object: str = "chat.completion.chunk"
    id_prefix: str = "chatcmpl-"

    def choice(self, text: str, finish_reason: str, logprobs: Logprobs) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        return {
            "index": 0,
            "message": message,
            "finish_reason": finish_reason,
            "logprobs": _chat_logprobs(logprobs),
        }

    def opening(self) -> dict[str, Any] | None:
        delta = {"role": "assistant", "content": ""}
        return {"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}

    def delta(
        self, text: str, finish_reason: str | None, logprobs: Logprobs, offset: int
    ) -> dict[str, Any]:
        delta = {"content": text} if text else {}
        return {
            "index": 0,
            "delta": delta,
            "finish_reason": finish_reason,
            "logprobs": _chat_logprobs(logprobs),
        }


@dataclass(frozen=True)
class TextShape:
    object: str = "text_completion"
    chunk_object: str = "text_completion"
    id_prefix: str = "cmpl-"

    def choice(self, text: str, finish_reason: str, logprobs: Logprobs) -> dict[str, Any]:
        return {
            "index": 0,
            "text": text,
            "finish_reason": finish_reason,
            "logprobs": _text_logprobs(logprobs, 0),
        }

    def opening(self) -> dict[str, Any] | None:
        return None

    def delta(
        self, text: str, finish_reason: str | None, logprobs: Logprobs, offset: int
    ) -> dict[str, Any]:
        return {
            "index": 0,
            "text": text,
            "finish_reason": finish_reason,
            "logprobs": _text_logprobs(logprobs, offset),
        }


def _candidate(candidate: Candidate) -> dict[str, Any]:
    return {
        "token": candidate.token,
        "logprob": candidate.logprob,
        "bytes": list(candidate.raw),
    }


def _chat_logprobs(logprobs: Logprobs) -> dict[str, Any] | None:
    """Chat's layout: ``content`` lists each token with its ``top_logprobs``."""
    if logprobs is None:
        return None
    content = [
        {**_candidate(item.chosen), "top_logprobs": [_candidate(c) for c in item.top]}
        for item in logprobs
    ]
    return {"content": content, "refusal": None}


def _text_logprobs(logprobs: Logprobs, offset: int) -> dict[str, Any] | None:
    """The completions API's layout: parallel lists; each ``top_logprobs`` entry maps the
    likeliest tokens' text (and the chosen token's) to their log-probabilities; each
    ``text_offset`` is where the token's text starts, counting from ``offset``."""
    if logprobs is None:
        return None
    offsets = []
    for item in logprobs:
        offsets.append(offset)
        offset += len(item.chosen.token)
    return {
        "tokens": [item.chosen.token for item in logprobs],
        "token_logprobs": [item.chosen.logprob for item in logprobs],
        "top_logprobs": [
            {c.token: c.logprob for c in (*item.top, item.chosen)} for item in logprobs
        ],
        "text_offset": offsets,
    }


CHAT = ChatShape()
TEXT = TextShape()


def new_meta(shape: Shape, model: str) -> ResponseMeta:
    return ResponseMeta(id=shape.id_prefix + uuid.uuid4().hex, model=model)


def usage(*completions: Completion) -> dict[str, Any]:
    """Token counts as OpenAI and vLLM report them, cached prompt tokens included; for the
    samples of one prompt (``n`` > 1), the prompt counted once and the generated tokens of
    every sample summed, with the fewest cached tokens any sample saw (the later samples
    find the blocks the first one computed; what the prompt had cached is the least)."""
    prompt = completions[0].prompt_tokens
    generated = sum(c.completion_tokens for c in completions)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": generated,
        "total_tokens": prompt + generated,
        "prompt_tokens_details": {"cached_tokens": min(c.cached_tokens for c in completions)},
    }


def body(
    shape: Shape,
    meta: ResponseMeta,
    completions: Sequence[Completion],
    asked: bool,
    spent: Sequence[Completion] = (),
) -> dict[str, Any]:
    """The non-streaming response, choice ``i`` from ``completions[i]``; ``asked``: the
    request asked for logprobs (else the field is null); ``usage`` counts ``spent``, every
    sample generated (``completions`` when empty; more with ``best_of``)."""
    choices = [
        {**shape.choice(c.text, c.finish_reason, c.logprobs if asked else None), "index": i}
        for i, c in enumerate(completions)
    ]
    return {
        "id": meta.id,
        "object": shape.object,
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
        "usage": usage(*(spent or completions)),
    }


def chunk(
    shape: Shape,
    meta: ResponseMeta,
    choices: list[dict[str, Any]],
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": meta.id,
        "object": shape.chunk_object,
        "created": meta.created,
        "model": meta.model,
        "choices": choices,
        "usage": usage,
    }


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event; ``data`` is a JSON object or a literal such as ``[DONE]``."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()

"""OpenAI response bodies and stream chunks, for chat and for text completions.

The two APIs differ only in names and in where the text goes (``message``/``delta`` against
``text``), so each is a small Shape object and everything else is shared.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from prefixkv.engine.engine import Completion


@dataclass(frozen=True)
class ResponseMeta:
    """What every body and chunk of one response repeats."""

    id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))


class Shape(Protocol):
    """Where one API puts the generated text."""

    @property
    def object(self) -> str: ...

    @property
    def chunk_object(self) -> str: ...

    @property
    def id_prefix(self) -> str: ...

    def choice(self, text: str, finish_reason: str) -> dict[str, Any]: ...

    def opening(self) -> dict[str, Any] | None:
        """The first streamed choice, sent when the first token exists; None for no such."""
        ...

    def delta(self, text: str, finish_reason: str | None) -> dict[str, Any]: ...


@dataclass(frozen=True)
class ChatShape:
    object: str = "chat.completion"
    chunk_object: str = "chat.completion.chunk"
    id_prefix: str = "chatcmpl-"

    def choice(self, text: str, finish_reason: str) -> dict[str, Any]:
        message = {"role": "assistant", "content": text}
        return {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}

    def opening(self) -> dict[str, Any] | None:
        delta = {"role": "assistant", "content": ""}
        return {"index": 0, "delta": delta, "finish_reason": None, "logprobs": None}

    def delta(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        delta = {"content": text} if text else {}
        return {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}


@dataclass(frozen=True)
class TextShape:
    object: str = "text_completion"
    chunk_object: str = "text_completion"
    id_prefix: str = "cmpl-"

    def choice(self, text: str, finish_reason: str) -> dict[str, Any]:
        return {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}

    def opening(self) -> dict[str, Any] | None:
        return None

    def delta(self, text: str, finish_reason: str | None) -> dict[str, Any]:
        return {"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}


CHAT = ChatShape()
TEXT = TextShape()


def new_meta(shape: Shape, model: str) -> ResponseMeta:
    return ResponseMeta(id=shape.id_prefix + uuid.uuid4().hex, model=model)


def usage(completion: Completion) -> dict[str, Any]:
    """Token counts as OpenAI and vLLM report them, cached prompt tokens included."""
    return {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": completion.cached_tokens},
    }


def body(shape: Shape, meta: ResponseMeta, completion: Completion) -> dict[str, Any]:
    """The non-streaming response."""
    return {
        "id": meta.id,
        "object": shape.object,
        "created": meta.created,
        "model": meta.model,
        "choices": [shape.choice(completion.text, completion.finish_reason)],
        "usage": usage(completion),
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

"""Prompts (text, token ids or chat messages) to validated token ids."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prefixkv.engine.sampling import InvalidRequestError
from prefixkv.tokens import as_token_bytes, tokens_from_bytes

ROLES = ("system", "developer", "user", "assistant")

Prompt = str | Sequence[int] | Sequence[Mapping[str, Any]]
"""Text; token ids; or chat messages ``[{"role": ..., "content": ...}, ...]``."""


def is_chat(prompt: Any) -> bool:
    """True for a non-empty list of chat messages."""
    return (
        isinstance(prompt, Sequence)
        and not isinstance(prompt, str)
        and bool(prompt)
        and all(isinstance(m, Mapping) for m in prompt)
    )


def prompt_field(prompt: Any) -> str:
    """The request field a prompt came in: "messages" for chat, else "prompt"."""
    return "messages" if is_chat(prompt) else "prompt"


def prompt_ids(prompt: Any, tokenizer: Any, vocab_size: int) -> list[int]:
    """Token ids of ``prompt``. Raises InvalidRequestError naming the problem."""
    if isinstance(prompt, str):
        if not prompt:
            raise InvalidRequestError("prompt is empty", "prompt")
        ids = list(tokenizer(prompt)["input_ids"])
    elif is_chat(prompt):
        ids = chat_ids(prompt, tokenizer)
    elif isinstance(prompt, Sequence) and not isinstance(prompt, (bytes, bytearray)):
        if len(prompt) == 0:
            raise InvalidRequestError("prompt is empty", "prompt")
        try:
            ids = tokens_from_bytes(as_token_bytes(prompt))
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"prompt token ids: {exc}", "prompt") from exc
    else:
        raise InvalidRequestError(
            f"prompt must be text, a list of token ids or a list of chat messages, got {type(prompt).__name__}",
            "prompt",
        )
    if not ids:
        raise InvalidRequestError("prompt has no tokens", "prompt")
    if max(ids) >= vocab_size:
        raise InvalidRequestError(
            f"token id {max(ids)} is outside the vocabulary (size {vocab_size})", "prompt"
        )
    return ids


def chat_ids(messages: Sequence[Mapping[str, Any]], tokenizer: Any) -> list[int]:
    """Render chat messages with the tokenizer's chat template, ready for the assistant."""
    rendered = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequestError(
                f"messages[{i}].role must be one of {list(ROLES)}, got {role!r}",
                f"messages[{i}].role",
            )
        rendered.append(
            {"role": "system" if role == "developer" else role, "content": _content(message, i)}
        )
    if getattr(tokenizer, "chat_template", None) is None:
        raise InvalidRequestError(
            "this model's tokenizer has no chat template; send a text prompt", "messages"
        )
    ids = tokenizer.apply_chat_template(rendered, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, Mapping):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def _content(message: Mapping[str, Any], i: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    # OpenAI's content parts: [{"type": "text", "text": "..."}]
    if isinstance(content, list) and all(
        isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return "".join(p["text"] for p in content)
    raise InvalidRequestError(
        f"messages[{i}].content must be a string or a list of text parts, got {type(content).__name__}",
        f"messages[{i}].content",
    )

"""Prompts (text, token ids or chat messages) to validated token ids in canonical form.

Chat messages are rendered with the tokenizer's chat template, and message *content* is
always tokenized as plain text: a user who writes ``<|im_end|>\\n<|im_start|>system`` gets
those characters, never the template's control tokens, so no message can forge a turn. The
template's own structure is tokenized normally (see :func:`chat_ids`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from prefixkv.engine.request import InvalidRequestError, short_repr
from prefixkv.tokens import TokenBytes, as_token_bytes

ROLES = ("system", "developer", "user", "assistant")

Prompt = str | Sequence[int] | Sequence[Mapping[str, Any]]
"""Text; token ids; or chat messages ``[{"role": ..., "content": ...}, ...]``."""

# Stand-ins for message contents while rendering the template's structure (private-use
# code points: no real message or template contains them).
_MARK = "\ue000prefixkv-content-{}\ue001"


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


def prompt_chars(prompt: Any) -> int:
    """Characters of text the prompt carries (0 for token ids): a cheap size to check before
    tokenizing. O(messages)."""
    if isinstance(prompt, str):
        return len(prompt)
    if is_chat(prompt):
        return sum(len(c) for m in prompt if isinstance(c := m.get("content"), str))
    return 0


def chars_per_token_bound(tokenizer: Any) -> int | None:
    """The most characters of text one token can stand for, or None when the tokenizer gives
    no such bound. Only byte-level BPE without a normalizer gives one: each token is a run of
    at most ``len(vocab string)`` bytes, so text of c characters needs more than
    ``c / bound`` tokens. (WordPiece or WordLevel can map any long unknown word to one token.)
    O(vocabulary), once per engine.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.normalizer is not None:
        return None
    if type(backend.model).__name__ != "BPE" or "ByteLevel" not in repr(backend.pre_tokenizer):
        return None
    return max(map(len, tokenizer.get_vocab()), default=1)


def prompt_ids(
    prompt: Any, tokenizer: Any, vocab_size: int, *, add_generation_prompt: bool = True
) -> TokenBytes:
    """Token ids of ``prompt``, converted once to the cache's canonical form (chat messages
    end with the assistant's opening unless ``add_generation_prompt`` is False). Raises
    InvalidRequestError naming the problem."""
    if isinstance(prompt, str):
        if not prompt:
            raise InvalidRequestError("prompt is empty", "prompt")
        _check_text(prompt, "prompt")
        ids = as_token_bytes(tokenizer(prompt)["input_ids"])
    elif is_chat(prompt):
        ids = as_token_bytes(chat_ids(prompt, tokenizer, add_generation_prompt))
    elif isinstance(prompt, Sequence) and not isinstance(prompt, (bytes, bytearray)):
        if len(prompt) == 0:
            raise InvalidRequestError("prompt is empty", "prompt")
        try:
            ids = as_token_bytes(prompt)
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(f"prompt token ids: {exc}", "prompt") from exc
    else:
        raise InvalidRequestError(
            f"prompt must be text, a list of token ids or a list of chat messages, got {type(prompt).__name__}",
            "prompt",
        )
    if not ids:
        raise InvalidRequestError("prompt has no tokens", "prompt")
    top = int(np.frombuffer(ids, dtype=np.uint32).max())
    if top >= vocab_size:
        raise InvalidRequestError(
            f"token id {top} is outside the vocabulary (size {vocab_size})", "prompt"
        )
    return ids


def chat_ids(
    messages: Sequence[Mapping[str, Any]], tokenizer: Any, add_generation_prompt: bool = True
) -> list[int]:
    """Render chat messages with the tokenizer's chat template, ready for the assistant
    (as the template renders ``add_generation_prompt``).

    The template is rendered twice: with stand-ins for the contents (its structure) and with
    the real contents. When the real rendering is the structure with each content pasted in
    verbatim (ChatML, SmolLM2 and most templates), structure pieces are tokenized with
    control tokens and contents as plain text. A template that rewrites contents (trims
    them, say) gives no such split; then a content holding a control-token string is
    refused rather than tokenized into control tokens.
    """
    roles, contents = [], []
    for i, message in enumerate(messages):
        roles.append(_role(message, i))
        contents.append(_content(message, i))
    if getattr(tokenizer, "chat_template", None) is None:
        raise InvalidRequestError(
            "this model's tokenizer has no chat template; send a text prompt", "messages"
        )
    marks = [_MARK.format(i) for i in range(len(contents))]
    structure = _split_on(_render(tokenizer, roles, marks, add_generation_prompt), marks)
    rendered = _render(tokenizer, roles, contents, add_generation_prompt)
    if structure is not None and rendered == _interleave(structure, contents):
        return _tokenize_pieces(tokenizer, structure, contents)
    for i, content in enumerate(contents):
        marker = next((t for t in _control_tokens(tokenizer) if t in content), None)
        if marker is not None:
            raise InvalidRequestError(
                f"messages[{i}].content contains the control token {marker!r}, which this "
                "model's chat template cannot keep as plain text",
                f"messages[{i}].content",
            )
    return list(tokenizer(rendered, add_special_tokens=False)["input_ids"])


def _render(tokenizer: Any, roles: list[str], contents: list[str], opening: bool) -> str:
    messages = [{"role": r, "content": c} for r, c in zip(roles, contents, strict=True)]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=opening, tokenize=False)
    return str(text)


def _split_on(text: str, marks: list[str]) -> list[str] | None:
    """``text`` cut at each mark in order (``len(marks) + 1`` pieces); None if a mark is
    missing, repeated or out of order."""
    pieces, pos = [], 0
    for mark in marks:
        at = text.find(mark, pos)
        if at < 0 or text.count(mark) != 1:
            return None
        pieces.append(text[pos:at])
        pos = at + len(mark)
    pieces.append(text[pos:])
    return pieces


def _interleave(structure: list[str], contents: list[str]) -> str:
    out = [structure[0]]
    for content, piece in zip(contents, structure[1:], strict=True):
        out += [content, piece]
    return "".join(out)


def _tokenize_pieces(tokenizer: Any, structure: list[str], contents: list[str]) -> list[int]:
    """Structure with control tokens, contents as text; refuses a tokenizer that still
    produced control tokens from a content."""
    framed = tokenizer(structure, add_special_tokens=False)["input_ids"]
    texts = tokenizer(contents, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    control = _control_ids(tokenizer)
    ids = list(framed[0])
    for i, (text_ids, piece_ids) in enumerate(zip(texts, framed[1:], strict=True)):
        if control.intersection(text_ids):
            raise InvalidRequestError(
                f"messages[{i}].content contains a control token that this tokenizer cannot "
                "encode as plain text",
                f"messages[{i}].content",
            )
        ids += text_ids
        ids += piece_ids
    return ids


def _control_ids(tokenizer: Any) -> set[int]:
    """Ids of special tokens that text never yields (the unknown token can: it is text)."""
    decoder = getattr(tokenizer, "added_tokens_decoder", {})
    special = {i for i, token in decoder.items() if getattr(token, "special", False)}
    return special - {getattr(tokenizer, "unk_token_id", None)}


def _control_tokens(tokenizer: Any) -> list[str]:
    decoder = getattr(tokenizer, "added_tokens_decoder", {})
    return [token.content for token in decoder.values() if getattr(token, "special", False)]


def _check_text(text: str, param: str) -> str:
    """``text`` if it is valid Unicode; JSON can carry lone surrogates (``"\\ud800"``),
    which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidRequestError(
            f"{param} is not valid Unicode text: a lone surrogate at position {exc.start}", param
        ) from None
    return text


def _role(message: Mapping[str, Any], i: int) -> str:
    role = message.get("role")
    if role not in ROLES:
        raise InvalidRequestError(
            f"messages[{i}].role must be one of {list(ROLES)}, got {short_repr(role)}",
            f"messages[{i}].role",
        )
    return "system" if role == "developer" else str(role)


def _content(message: Mapping[str, Any], i: int) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return _check_text(content, f"messages[{i}].content")
    # OpenAI's content parts: [{"type": "text", "text": "..."}]
    if isinstance(content, list) and all(
        isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str)
        for p in content
    ):
        return _check_text("".join(p["text"] for p in content), f"messages[{i}].content")
    raise InvalidRequestError(
        f"messages[{i}].content must be a string or a list of text parts, got {type(content).__name__}",
        f"messages[{i}].content",
    )

"""``POST /tokenize`` and ``POST /detokenize``, as vLLM exposes them.

``/tokenize`` takes ``prompt`` (text) or ``messages`` (rendered with the chat template, with
``tools`` and tool turns as a chat request renders them, and the assistant's opening unless
``add_generation_prompt`` is false) and returns the ids a generation request would carry:
``tokens``, ``count`` and the model's ``max_model_len``.
``/detokenize`` takes ``tokens`` and returns their text as ``prompt``. Both authenticate as
the generation endpoints do, read bodies under the same bound, and tokenize on the
preparation thread, never on the event loop.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request as HTTPRequest

from prefixkv.engine.prompts import Prompt
from prefixkv.engine.request import wrong_type
from prefixkv.engine.role import EngineRole
from prefixkv.server.body import read_json_object
from prefixkv.server.generation import Generation
from prefixkv.server.parse import chat_messages, check_model, read_bool
from prefixkv.server.settings import ServerSettings
from prefixkv.server.tool_history import tool_messages
from prefixkv.server.tools import parse_tools
from prefixkv.tokens import tokens_from_bytes


async def tokenize(
    http: HTTPRequest, engine: EngineRole, generation: Generation, settings: ServerSettings
) -> dict[str, Any]:
    """The ``/tokenize`` answer; raises APIError or InvalidRequestError (a 400) naming the
    field."""
    body = await read_json_object(http, settings.max_body_bytes)
    check_model(body, settings)
    prompt: Prompt
    if body.get("messages") is not None:
        prompt = tool_messages(chat_messages(body), parse_tools(body))
        opening = read_bool(body, "add_generation_prompt", True)
    else:
        text = body.get("prompt")
        if not isinstance(text, str):
            raise wrong_type("prompt", "a string (or send messages)", text)
        prompt, opening = text, True
    ids = await generation.prepared(lambda: engine.tokenize(prompt, add_generation_prompt=opening))
    tokens = tokens_from_bytes(ids)
    return {
        "count": len(tokens),
        "max_model_len": engine.context_length,
        "tokens": tokens,
        "token_strs": None,
    }


async def detokenize(
    http: HTTPRequest, engine: EngineRole, generation: Generation, settings: ServerSettings
) -> dict[str, Any]:
    """The ``/detokenize`` answer; raises as :func:`tokenize`."""
    body = await read_json_object(http, settings.max_body_bytes)
    check_model(body, settings)
    tokens = body.get("tokens")
    if not isinstance(tokens, list):
        raise wrong_type("tokens", "a list of token ids", tokens)
    return {"prompt": await generation.prepared(lambda: engine.detokenize(tokens))}

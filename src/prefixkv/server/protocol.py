"""OpenAI request bodies (chat and text completions) to validated GenerationRequests.

Parsing checks shapes and types and names the offending field in ``param``; what needs the
tokenizer (roles, content, prompt length against the context) is left to the engine, whose
InvalidRequestError also carries ``param``. Unknown fields are ignored, as OpenAI-compatible
servers do; known fields that would change the output in a way we do not implement
(logprobs, tools, penalties, n > 1, ...) are refused rather than silently ignored.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from prefixkv.engine.prompts import Prompt
from prefixkv.server.errors import APIError
from prefixkv.server.settings import ServerSettings

MAX_TEMPERATURE = 2.0  # OpenAI's bound; the engine itself accepts more
_SEED_RANGE = (-(1 << 63), (1 << 64) - 1)  # what torch.Generator.manual_seed accepts


@dataclass(frozen=True)
class GenerationRequest:
    """One validated request. ``max_tokens`` None means "the server's default"."""

    prompt: Prompt
    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int | None
    stop: str | list[str] | None
    stream: bool
    include_usage: bool
    cache_salt: str


def parse_chat(body: Mapping[str, Any], settings: ServerSettings) -> GenerationRequest:
    """A ``/v1/chat/completions`` body; raises APIError naming the first bad field."""
    check_model(body, settings)
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise _type_error("messages", "a list of messages", messages)
    if not messages:
        raise APIError.invalid("messages must contain at least one message", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise _type_error(f"messages[{i}]", "an object", message)
    return _generation(body, messages, settings)


def parse_completion(body: Mapping[str, Any], settings: ServerSettings) -> GenerationRequest:
    """A ``/v1/completions`` body: ``prompt`` is text or token ids, one prompt per request."""
    check_model(body, settings)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise APIError.invalid("only one prompt per request is supported", "prompt")
        prompt = prompt[0]
    if isinstance(prompt, list):
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise _type_error("prompt", "text or a list of token ids", prompt)
    elif not isinstance(prompt, str):
        raise _type_error("prompt", "text or a list of token ids", prompt)
    return _generation(body, prompt, settings)


def check_model(body: Mapping[str, Any], settings: ServerSettings) -> None:
    """``model`` may be omitted; if given it must name the served model (404 otherwise)."""
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise _type_error("model", "a string", model)
    if model not in settings.model_names:
        raise APIError(
            404,
            f"the model {model!r} does not exist; this server serves {settings.model!r}",
            param="model",
            code="model_not_found",
        )


def _generation(
    body: Mapping[str, Any], prompt: Prompt, settings: ServerSettings
) -> GenerationRequest:
    _refuse_unsupported(body)
    stream = _bool(body, "stream", False)
    return GenerationRequest(
        prompt=prompt,
        max_tokens=_max_tokens(body, settings),
        temperature=_number(body, "temperature", 1.0, 0.0, MAX_TEMPERATURE),
        top_p=_number(body, "top_p", 1.0, 0.0, 1.0, low_open=True),
        seed=_seed(body),
        stop=_stop(body),
        stream=stream,
        include_usage=stream and _include_usage(body),
        cache_salt=_cache_salt(body, settings),
    )


def _max_tokens(body: Mapping[str, Any], settings: ServerSettings) -> int | None:
    # max_completion_tokens is the newer name; it wins when both are sent.
    name = (
        "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    )
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise _type_error(name, "an integer", value)
    if value < 1:
        raise APIError.invalid(f"{name} must be >= 1, got {value}", name)
    if value > settings.max_tokens_limit:
        raise APIError.invalid(
            f"{name} must be <= {settings.max_tokens_limit} on this server, got {value}", name
        )
    return int(value)


def _number(
    body: Mapping[str, Any],
    name: str,
    default: float,
    low: float,
    high: float,
    *,
    low_open: bool = False,
) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _type_error(name, "a number", value)
    if value > high or value < low or (low_open and value == low):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise APIError.invalid(f"{name} must be in {interval}, got {value}", name)
    return float(value)


def _seed(body: Mapping[str, Any]) -> int | None:
    seed = body.get("seed")
    if seed is None:
        return None
    if not _is_int(seed):
        raise _type_error("seed", "an integer", seed)
    if not _SEED_RANGE[0] <= seed <= _SEED_RANGE[1]:
        raise APIError.invalid("seed must fit in 64 bits", "seed")
    return int(seed)


def _stop(body: Mapping[str, Any]) -> str | list[str] | None:
    stop = body.get("stop")
    if stop is None or isinstance(stop, str):
        return stop or None
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return stop
    raise _type_error("stop", "a string or a list of strings", stop)


def _include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise _type_error("stream_options", "an object", options)
    return _bool(options, "include_usage", False, "stream_options.include_usage")


def _cache_salt(body: Mapping[str, Any], settings: ServerSettings) -> str:
    salt = body.get("cache_salt")
    if salt is None:
        return ""
    if not isinstance(salt, str):
        raise _type_error("cache_salt", "a string", salt)
    if len(salt) > settings.max_cache_salt_chars:
        raise APIError.invalid(
            f"cache_salt must be at most {settings.max_cache_salt_chars} characters", "cache_salt"
        )
    return salt


def _bool(body: Mapping[str, Any], name: str, default: bool, param: str | None = None) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _type_error(param or name, "a boolean", value)
    return value


# Fields whose non-default values ask for behaviour this server does not implement.
_UNSUPPORTED: dict[str, Callable[[Any], bool]] = {
    "n": lambda v: v == 1,
    "best_of": lambda v: v == 1,
    "logprobs": lambda v: v is False or v == 0,
    "top_logprobs": lambda v: v == 0,
    "echo": lambda v: v is False,
    "suffix": lambda v: v == "",
    "logit_bias": lambda v: v == {},
    "presence_penalty": lambda v: v == 0,
    "frequency_penalty": lambda v: v == 0,
    "tools": lambda v: v == [],
    "functions": lambda v: v == [],
    "tool_choice": lambda v: v in ("none", "auto"),
    "response_format": lambda v: v == {"type": "text"},
}


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    for name, harmless in _UNSUPPORTED.items():
        value = body.get(name)
        if value is not None and not harmless(value):
            raise APIError.invalid(
                f"{name}={value!r} is not supported by this server", name, "unsupported_parameter"
            )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_error(param: str, expected: str, value: object) -> APIError:
    got = "null" if value is None else type(value).__name__
    return APIError.invalid(f"{param} must be {expected}, got {got}", param, "invalid_type")

"""OpenAI request bodies (chat and text completions) to validated ParsedRequests.

Parsing checks what only the HTTP API knows: which fields exist, their JSON types, OpenAI's
bounds and this server's limits; it names the offending field in ``param``. Sampling values
are validated once, by :class:`~prefixkv.engine.request.SamplingParams`; what needs the
tokenizer (roles, content, prompt length against the context) is left to the engine's
``request``, whose InvalidRequestError also carries ``param``. Unknown fields are ignored, as
OpenAI-compatible servers do; known fields that would change the output in a way we do not
implement (legacy ``functions``, echo, suffix, chat's best_of) are refused
rather than silently ignored. ``n`` (1 to ``MAX_N``) asks for that many samples of the
prompt (see :mod:`prefixkv.engine.samples`), the completions API's ``best_of`` for that many
to choose the best ``n`` from (:mod:`prefixkv.server.best_of`); ``tools`` are read by
:mod:`prefixkv.server.tools`, structured outputs by :mod:`prefixkv.server.structured`.

``logprobs`` differs between the two APIs: chat sends ``logprobs: true`` and
``top_logprobs: 0..20``; completions send ``logprobs: 0..5``. Both become
``SamplingParams.logprobs``, the number of alternatives to report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from prefixkv.engine.prompts import Prompt
from prefixkv.engine.request import (
    MAX_LOGPROBS,
    InvalidRequestError,
    SamplingParams,
    short_repr,
    wrong_type,
)
from prefixkv.engine.samples import check_n
from prefixkv.server.best_of import read_best_of
from prefixkv.server.errors import APIError
from prefixkv.server.prompt_scores import read_prompt_logprobs
from prefixkv.server.settings import ServerSettings
from prefixkv.server.structured import grammar_of
from prefixkv.server.tool_grammar import tool_grammar
from prefixkv.server.tool_history import tool_messages
from prefixkv.server.tools import ToolSpec, parse_tools

MAX_TEMPERATURE = 2.0  # OpenAI's bound; the engine itself accepts more
OPENAI_TEMPERATURE = 1.0  # OpenAI's default (the library's is 0: greedy)
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's bound on the completions API's logprobs


@dataclass(frozen=True)
class ParsedRequest:
    """One generation request as the HTTP API states it; ``params.max_tokens`` None means
    "the server's default"."""

    prompt: Prompt
    params: SamplingParams
    stream: bool
    include_usage: bool
    cache_salt: str
    n: int = 1
    """Samples of the prompt to return (choices ``0..n-1``)."""
    best_of: int = 1
    """Samples of the prompt to generate (at least ``n``; more: the best ``n`` returned)."""
    prompt_logprobs: int | None = None
    """Alternatives per prompt token to report (:mod:`prefixkv.server.prompt_scores`);
    None: no prompt logprobs."""
    tools: ToolSpec | None = None


def parse_chat(body: Mapping[str, Any], settings: ServerSettings) -> ParsedRequest:
    """A ``/v1/chat/completions`` body, its tools and tool turns rendered as plain messages
    (see :mod:`prefixkv.server.tools`); raises APIError naming the first bad field."""
    check_model(body, settings)
    _refuse(body, _CHAT_UNSUPPORTED)
    tools = parse_tools(body)
    messages = tool_messages(chat_messages(body), tools)
    parsed = replace(_parse(body, messages, settings, _chat_logprobs(body)), tools=tools)
    forced = None if tools is None else tool_grammar(tools)
    if forced is None:
        return parsed
    if parsed.params.grammar is not None:
        raise APIError.invalid(
            "a required or named tool_choice cannot be combined with response_format or "
            "structured_outputs",
            "tool_choice",
        )
    return replace(parsed, params=replace(parsed.params, grammar=forced))


def chat_messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``messages``, checked to be a non-empty list of objects."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise wrong_type("messages", "a list of messages", messages)
    if not messages:
        raise APIError.invalid("messages must contain at least one message", "messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise wrong_type(f"messages[{i}]", "an object", message)
    return messages


def parse_completion(body: Mapping[str, Any], settings: ServerSettings) -> ParsedRequest:
    """A ``/v1/completions`` body: ``prompt`` is text or token ids, one prompt per request."""
    check_model(body, settings)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (str, list)):
        if len(prompt) != 1:
            raise APIError.invalid("only one prompt per request is supported", "prompt")
        prompt = prompt[0]
    if isinstance(prompt, list):
        if not all(_is_int(t) for t in prompt):
            raise wrong_type("prompt", "text or a list of token ids", prompt)
    elif not isinstance(prompt, str):
        raise wrong_type("prompt", "text or a list of token ids", prompt)
    parsed = _parse(body, prompt, settings, _completion_logprobs(body))
    return replace(parsed, best_of=read_best_of(body, parsed.n, parsed.stream))


def _chat_logprobs(body: Mapping[str, Any]) -> int | None:
    """Chat's ``logprobs`` (a boolean) and ``top_logprobs`` (more than 0 needs ``logprobs:
    true``; 0, which some clients always send, is harmless)."""
    top = body.get("top_logprobs")
    if not read_bool(body, "logprobs", False):
        if top is not None and not (_is_int(top) and top == 0):
            raise APIError.invalid("top_logprobs needs logprobs set to true", "top_logprobs")
        return None
    if top is None:
        return 0
    return _count(top, "top_logprobs", MAX_LOGPROBS)


def _completion_logprobs(body: Mapping[str, Any]) -> int | None:
    """The completions API's ``logprobs``: how many alternatives, 0..5, or null."""
    value = body.get("logprobs")
    return None if value is None else _count(value, "logprobs", MAX_COMPLETION_LOGPROBS)


def _count(value: object, name: str, most: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise wrong_type(name, "an integer", value)
    if not 0 <= value <= most:
        raise APIError.invalid(f"{name} must be in [0, {most}], got {short_repr(value)}", name)
    return value


def check_model(body: Mapping[str, Any], settings: ServerSettings) -> None:
    """``model`` may be omitted; if given it must name the served model (404 otherwise)."""
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise wrong_type("model", "a string", model)
    if model not in settings.model_names:
        raise APIError(
            404,
            f"the model {short_repr(model)} does not exist; this server serves {settings.model!r}",
            param="model",
            code="model_not_found",
        )


def _parse(
    body: Mapping[str, Any], prompt: Prompt, settings: ServerSettings, logprobs: int | None
) -> ParsedRequest:
    _refuse(body, _UNSUPPORTED)
    stream = read_bool(body, "stream", False)
    n = 1 if body.get("n") is None else check_n(body["n"])
    return ParsedRequest(
        prompt=prompt,
        params=_sampling(body, settings, logprobs),
        stream=stream,
        include_usage=stream and _include_usage(body),
        cache_salt=_cache_salt(body, settings),
        n=n,
        best_of=n,
        prompt_logprobs=read_prompt_logprobs(body, stream),
    )


def _sampling(
    body: Mapping[str, Any], settings: ServerSettings, logprobs: int | None
) -> SamplingParams:
    # max_completion_tokens is the newer name; it wins when both are sent.
    name = (
        "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    )
    temperature = body.get("temperature")
    try:
        params = SamplingParams.create(
            max_tokens=body.get(name),
            temperature=OPENAI_TEMPERATURE if temperature is None else temperature,
            top_p=1.0 if body.get("top_p") is None else body["top_p"],
            seed=body.get("seed"),
            stop=body.get("stop"),
            logprobs=logprobs,
            grammar=grammar_of(body),
            **_controls(body),
        )
    except InvalidRequestError as exc:
        if exc.param == "max_tokens" != name:  # name the field that was sent
            raise InvalidRequestError(
                str(exc).replace("max_tokens", name), name, exc.code
            ) from None
        raise
    if params.temperature > MAX_TEMPERATURE:
        raise APIError.invalid(
            f"temperature must be in [0, {MAX_TEMPERATURE:g}], got {params.temperature}",
            "temperature",
        )
    if params.max_tokens is not None and params.max_tokens > settings.max_tokens_limit:
        raise APIError.invalid(
            f"{name} must be <= {settings.max_tokens_limit} on this server, "
            f"got {short_repr(params.max_tokens)}",
            name,
        )
    return params


# The logits controls, with the value that means "not set" (JSON null is read as it).
_CONTROLS: dict[str, object] = {
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "repetition_penalty": 1.0,
    "logit_bias": None,
    "min_tokens": 0,
    "stop_token_ids": None,
    "ignore_eos": False,
}


def _controls(body: Mapping[str, Any]) -> dict[str, Any]:
    """The controls as SamplingParams.create takes them (it validates them)."""
    return {
        name: unset if body.get(name) is None else body[name] for name, unset in _CONTROLS.items()
    }


def _include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise wrong_type("stream_options", "an object", options)
    return read_bool(options, "include_usage", False, "stream_options.include_usage")


def _cache_salt(body: Mapping[str, Any], settings: ServerSettings) -> str:
    salt = body.get("cache_salt")
    if salt is None:
        return ""
    if not isinstance(salt, str):
        raise wrong_type("cache_salt", "a string", salt)
    if len(salt) > settings.max_cache_salt_chars:
        raise APIError.invalid(
            f"cache_salt must be at most {settings.max_cache_salt_chars} characters", "cache_salt"
        )
    return salt


def read_bool(body: Mapping[str, Any], name: str, default: bool, param: str | None = None) -> bool:
    """``body[name]`` as a boolean (``default`` when absent or null); raises naming it."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise wrong_type(param or name, "a boolean", value)
    return value


def _is_one(value: object) -> bool:
    return _is_int(value) and value == 1


# Fields whose non-default values ask for behaviour this server does not implement.
_UNSUPPORTED: dict[str, Callable[[Any], bool]] = {
    "echo": lambda v: v is False,
    "suffix": lambda v: v == "",
    "functions": lambda v: v == [],
}


_CHAT_UNSUPPORTED: dict[str, Callable[[Any], bool]] = {"best_of": _is_one}


def _refuse(body: Mapping[str, Any], unsupported: Mapping[str, Callable[[Any], bool]]) -> None:
    for name, harmless in unsupported.items():
        value = body.get(name)
        if value is not None and not harmless(value):
            raise APIError.invalid(
                f"{name}={short_repr(value)} is not supported by this server",
                name,
                "unsupported_parameter",
            )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

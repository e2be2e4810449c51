"""The records a generation passes through: SamplingParams in, Request (validated once, its
prompt converted once), Completion out. No torch or transformers here, so the server and its
tests can use them without loading a model."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prefixkv.engine.logprob_records import TokenLogprob
from prefixkv.tokens import TokenBytes, token_count


class InvalidRequestError(ValueError):
    """A request that cannot be served as given. ``param`` names the offending field;
    ``code`` is ``"invalid_type"`` for a value of the wrong JSON type,
    ``"context_length_exceeded"`` for a prompt or max_tokens past the model's context."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


SEED_MIN, SEED_MAX = -(1 << 63), (1 << 64) - 1  # what torch.Generator.manual_seed accepts
MAX_STOPS = 16
MAX_PENALTY = 2.0  # OpenAI's bound on presence_penalty and frequency_penalty
MAX_BIAS = 100.0  # OpenAI's bound on a logit_bias value
MAX_LOGPROBS = 20  # OpenAI's bound on top_logprobs
MAX_LISTED_IDS = 1024  # logit_bias entries or stop_token_ids per request


@dataclass(frozen=True)
class GrammarSpec:
    """A structured-output constraint, as :mod:`prefixkv.engine.grammar` compiles it.

    ``kind``: ``"json_schema"`` (``source`` a JSON schema as JSON text), ``"regex"``, or
    ``"lark"`` (a Lark grammar; a choice of strings is sent as one). ``param``: the request
    field it came from, named by a compile error. Hashable: the compile cache's key.
    """

    kind: str
    source: str
    param: str

    def __post_init__(self) -> None:
        if self.kind not in ("json_schema", "regex", "lark"):
            raise ValueError(f"unknown grammar kind {self.kind!r}")


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens; validated on construction (InvalidRequestError naming the field).

    ``max_tokens`` None means "the engine's default, as far as the context allows";
    :meth:`create` also accepts ``stop`` as one string or a list, ``logit_bias`` as a
    mapping of token ids (ints or their decimal strings, as JSON sends them) to biases.

    The logits controls (see :mod:`prefixkv.engine.processors`): ``presence_penalty`` and
    ``frequency_penalty`` (OpenAI's, over the generated tokens), ``repetition_penalty``
    (over prompt and generated tokens; 1 is none), ``logit_bias`` (sorted ``(id, bias)``
    pairs), ``min_tokens`` (end tokens masked until that many were generated; stop
    strings still end the reply, where vLLM holds them off too),
    ``stop_token_ids`` (more tokens that end the reply), ``ignore_eos``. ``logprobs`` None
    reports no log-probabilities; k reports each chosen token's and the k likeliest.
    ``grammar``: a structured-output constraint (the reply ends, with ``stop``, once the
    grammar is complete). Token ids are checked against the vocabulary by ``Engine.request``.
    """

    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    min_tokens: int = 0
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    grammar: GrammarSpec | None = None

    @classmethod
    def create(
        cls,
        max_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
        *,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        repetition_penalty: float = 1.0,
        logit_bias: Mapping[Any, Any] | None = None,
        min_tokens: int = 0,
        stop_token_ids: Sequence[int] | None = None,
        ignore_eos: bool = False,
        logprobs: int | None = None,
        grammar: GrammarSpec | None = None,
    ) -> SamplingParams:
        """The record from loosely typed values (ints for floats, one stop string, a
        logit_bias mapping, a list of stop ids)."""
        if stop is None or isinstance(stop, str):
            stops: tuple[str, ...] = (stop,) if stop else ()
        elif isinstance(stop, (list, tuple)):
            stops = tuple(stop)
        else:
            raise wrong_type("stop", "a string or a list of strings", stop)
        if stop_token_ids is not None and not isinstance(stop_token_ids, (list, tuple)):
            raise wrong_type("stop_token_ids", "a list of token ids", stop_token_ids)
        return cls(
            max_tokens,
            _as_float("temperature", temperature),
            _as_float("top_p", top_p),
            seed,
            stops,
            _as_float("presence_penalty", presence_penalty),
            _as_float("frequency_penalty", frequency_penalty),
            _as_float("repetition_penalty", repetition_penalty),
            _bias_pairs(logit_bias),
            min_tokens,
            tuple(stop_token_ids or ()),
            ignore_eos,
            logprobs,
            grammar,
        )

    def __post_init__(self) -> None:
        if self.max_tokens is not None:
            _check_int("max_tokens", self.max_tokens)
            if self.max_tokens < 1:
                raise InvalidRequestError(
                    f"max_tokens must be >= 1, got {short_repr(self.max_tokens)}", "max_tokens"
                )
        _check_number("temperature", self.temperature)
        if not 0.0 <= self.temperature <= 100.0:
            raise InvalidRequestError(
                f"temperature must be in [0, 100], got {short_repr(self.temperature)}",
                "temperature",
            )
        _check_number("top_p", self.top_p)
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequestError(
                f"top_p must be in (0, 1], got {short_repr(self.top_p)}", "top_p"
            )
        if self.seed is not None:
            _check_int("seed", self.seed)
            if not SEED_MIN <= self.seed <= SEED_MAX:
                raise InvalidRequestError("seed must fit in 64 bits", "seed")
        if not all(isinstance(s, str) for s in self.stop):
            raise wrong_type("stop", "a string or a list of strings", self.stop)
        if not all(self.stop) or len(self.stop) > MAX_STOPS:
            raise InvalidRequestError(
                f"stop must be a non-empty string or a list of up to {MAX_STOPS} of them", "stop"
            )
        self._check_controls()

    def _check_controls(self) -> None:
        """The logits controls' bounds (raises InvalidRequestError naming the field)."""
        for name in ("presence_penalty", "frequency_penalty"):
            _check_range(name, getattr(self, name), -MAX_PENALTY, MAX_PENALTY)
        _check_number("repetition_penalty", self.repetition_penalty)
        if not self.repetition_penalty > 0.0:
            raise InvalidRequestError(
                f"repetition_penalty must be > 0, got {short_repr(self.repetition_penalty)}",
                "repetition_penalty",
            )
        if len(self.logit_bias) > MAX_LISTED_IDS or len(self.stop_token_ids) > MAX_LISTED_IDS:
            name = "logit_bias" if len(self.logit_bias) > MAX_LISTED_IDS else "stop_token_ids"
            raise InvalidRequestError(f"{name} may list at most {MAX_LISTED_IDS} tokens", name)
        for token, bias in self.logit_bias:
            _check_id("logit_bias", token)
            _check_range("logit_bias", bias, -MAX_BIAS, MAX_BIAS)
        for token in self.stop_token_ids:
            _check_id("stop_token_ids", token)
        _check_int("min_tokens", self.min_tokens)
        if self.min_tokens < 0 or (
            self.max_tokens is not None and self.min_tokens > self.max_tokens
        ):
            raise InvalidRequestError(
                f"min_tokens must be in [0, max_tokens], got {short_repr(self.min_tokens)}",
                "min_tokens",
            )
        if not isinstance(self.ignore_eos, bool):
            raise wrong_type("ignore_eos", "a boolean", self.ignore_eos)
        if self.logprobs is not None:
            _check_int("logprobs", self.logprobs)
            _check_range("logprobs", self.logprobs, 0, MAX_LOGPROBS)


@dataclass(frozen=True)
class Request:
    """One request as the engine runs it. Built by ``Engine.request``, which tokenizes and
    validates once; every later layer (queue, scheduler, cache) takes it as it is.

    ``ids``: the prompt in the cache's canonical form (converted once, from the tokenizer's
    output). ``params.max_tokens`` is resolved: never None, and prompt + max_tokens fits the
    model's context.
    """

    ids: TokenBytes
    params: SamplingParams
    namespace: Hashable = None

    @property
    def prompt_tokens(self) -> int:
        return token_count(self.ids)

    @property
    def max_tokens(self) -> int:
        assert self.params.max_tokens is not None, "Engine.request resolves max_tokens"
        return self.params.max_tokens


@dataclass(frozen=True)
class Completion:
    """The outcome of one request. Times are seconds from the call."""

    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    cached_tokens: int
    """Prompt tokens whose KV came from the cache (never all: the last one is recomputed)."""
    finish_reason: str
    """``"stop"`` (end-of-sequence token or a stop string) or ``"length"`` (max_tokens)."""
    ttft: float
    total_time: float
    logprobs: tuple[TokenLogprob, ...] = ()
    """One per generated token when the request asked for logprobs, else empty."""

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


def short_repr(value: object, limit: int = 80) -> str:
    """A bounded repr for error messages: request values may be huge or deeply nested."""
    if isinstance(value, (dict, list, tuple)):
        return f"<{type(value).__name__} of {len(value)}>"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"<an integer of {value.bit_length()} bits>"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def wrong_type(param: str, expected: str, value: object) -> InvalidRequestError:
    """The error for a value of the wrong JSON type (code ``invalid_type``)."""
    got = "null" if value is None else type(value).__name__
    return InvalidRequestError(f"{param} must be {expected}, got {got}", param, "invalid_type")


def _check_int(param: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise wrong_type(param, "an integer", value)


def _check_number(param: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise wrong_type(param, "a number", value)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidRequestError(f"{param} must be finite, got {value}", param)


def _check_range(param: str, value: object, low: float, high: float) -> None:
    _check_number(param, value)
    if not low <= value <= high:  # type: ignore[operator]
        raise InvalidRequestError(
            f"{param} must be in [{low:g}, {high:g}], got {short_repr(value)}", param
        )


def _check_id(param: str, value: object) -> None:
    _check_int(param, value)
    if value < 0:  # type: ignore[operator]
        raise InvalidRequestError(f"{param}: token ids must be >= 0, got {value}", param)


def _bias_pairs(bias: Mapping[Any, Any] | None) -> tuple[tuple[int, float], ...]:
    """``{"123": 5}`` (JSON's form) or ``{123: 5}`` as sorted ``(id, bias)`` pairs."""
    if bias is None:
        return ()
    if not isinstance(bias, Mapping):
        raise wrong_type("logit_bias", "an object of token ids to numbers", bias)
    pairs = []
    for key, value in bias.items():
        token = key
        if isinstance(key, str):
            if not key.isascii() or not key.isdigit() or len(key) > 12:
                raise InvalidRequestError(
                    f"logit_bias keys must be token ids, got {short_repr(key)}", "logit_bias"
                )
            token = int(key)
        _check_id("logit_bias", token)
        pairs.append((token, _as_float("logit_bias", value)))
    return tuple(sorted(pairs))


def _as_float(param: str, value: object) -> float:
    _check_number(param, value)
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError:  # an int beyond float's range (e.g. 400 digits)
        raise InvalidRequestError(f"{param} is out of range", param) from None

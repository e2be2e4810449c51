"""The records a generation passes through: SamplingParams in, Request (validated once, its
prompt converted once), Completion out. No torch or transformers here, so the server and its
tests can use them without loading a model."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

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


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens; validated on construction (InvalidRequestError naming the field).

    ``max_tokens`` None means "the engine's default, as far as the context allows";
    :meth:`create` also accepts ``stop`` as one string or a list.
    """

    max_tokens: int | None = None
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    @classmethod
    def create(
        cls,
        max_tokens: int | None = None,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
    ) -> SamplingParams:
        """The record from loosely typed values (ints for floats, one stop string)."""
        if stop is None or isinstance(stop, str):
            stops: tuple[str, ...] = (stop,) if stop else ()
        elif isinstance(stop, (list, tuple)):
            stops = tuple(stop)
        else:
            raise wrong_type("stop", "a string or a list of strings", stop)
        return cls(
            max_tokens,
            _as_float("temperature", temperature),
            _as_float("top_p", top_p),
            seed,
            stops,
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


def _as_float(param: str, value: object) -> float:
    _check_number(param, value)
    try:
        return float(value)  # type: ignore[arg-type]
    except OverflowError:  # an int beyond float's range (e.g. 400 digits)
        raise InvalidRequestError(f"{param} is out of range", param) from None

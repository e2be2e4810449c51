"""Sampling parameters and the sampler that turns next-token logits into a token id."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


class InvalidRequestError(ValueError):
    """A request that cannot be served as given. ``param`` names the offending field."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


SEED_MIN, SEED_MAX = -(1 << 63), (1 << 64) - 1  # what torch.Generator.manual_seed accepts


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. Construct through :meth:`create`, which validates."""

    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]

    @classmethod
    def create(
        cls,
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] | None = None,
    ) -> SamplingParams:
        """Raise InvalidRequestError naming the first bad field; else the frozen record."""
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise InvalidRequestError(
                f"max_tokens must be an integer >= 1, got {max_tokens!r}", "max_tokens"
            )
        if not _is_real(temperature) or not 0.0 <= temperature <= 100.0:
            raise InvalidRequestError(
                f"temperature must be a number in [0, 100], got {temperature!r}", "temperature"
            )
        if not _is_real(top_p) or not 0.0 < top_p <= 1.0:
            raise InvalidRequestError(f"top_p must be a number in (0, 1], got {top_p!r}", "top_p")
        if seed is not None and (
            isinstance(seed, bool) or not isinstance(seed, int) or not SEED_MIN <= seed <= SEED_MAX
        ):
            raise InvalidRequestError(
                f"seed must be an integer in [{SEED_MIN}, {SEED_MAX}] or null, got {seed!r}", "seed"
            )
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        if not all(isinstance(s, str) and s for s in stops) or len(stops) > 16:
            raise InvalidRequestError(
                "stop must be a non-empty string or a list of up to 16 of them", "stop"
            )
        return cls(max_tokens, float(temperature), float(top_p), seed, stops)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class Sampler:
    """Greedy at temperature 0, else temperature + nucleus (top-p) sampling.

    Randomness comes from a private ``torch.Generator`` seeded with ``params.seed``, so a
    seeded request draws the same uniform numbers whether or not its prefix was cached.
    """

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        self._generator = torch.Generator()
        if params.seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(params.seed)

    def __call__(self, logits: torch.Tensor) -> int:
        """``logits``: ``[vocab]`` for the next position. Returns the chosen token id."""
        if self.params.temperature == 0.0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits.double() / self.params.temperature, dim=-1)
        if self.params.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < self.params.top_p
            probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_probs[keep])
        cdf = torch.cumsum(probs, dim=-1)
        draw = torch.rand((), generator=self._generator, dtype=torch.float64) * cdf[-1]
        return int(torch.searchsorted(cdf, draw.reshape(1), right=True).clamp_(max=cdf.numel() - 1))

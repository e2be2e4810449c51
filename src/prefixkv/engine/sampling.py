"""The sampler: next-token logits to a token id, as a request's SamplingParams say."""

from __future__ import annotations

import torch

from prefixkv.engine.request import SamplingParams


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

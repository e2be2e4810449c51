"""The sampler: next-token logits to a token id, as a request's SamplingParams say.

Greedy choice runs numpy's argmax on the calling thread where numpy can view the logits: a
``torch.argmax`` over more than 32K values is a parallel region of PyTorch's intra-op pool
(as in :mod:`prefixkv.engine.bitmask`), and on a loaded host it waits for a worker the OS
has descheduled (SmolLM2's 49,152 logits: 76 us p50, 4.2 ms p99, against numpy's 4.6 and
7.6 us; ``benchmarks/argmax_stall.py``). Both return the first index of the largest value, a
NaN counting as largest, so the token is the same (``tests/engine/test_sampling.py``).
"""

from __future__ import annotations

import torch

from prefixkv.engine.numpy_views import numpy_views
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
            return greedy_token(logits)
        probs = torch.softmax(logits.double() / self.params.temperature, dim=-1)
        if self.params.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            keep = torch.cumsum(sorted_probs, dim=-1) - sorted_probs < self.params.top_p
            probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_probs[keep])
        cdf = torch.cumsum(probs, dim=-1)
        draw = torch.rand((), generator=self._generator, dtype=torch.float64) * cdf[-1]
        return int(torch.searchsorted(cdf, draw.reshape(1), right=True).clamp_(max=cdf.numel() - 1))


def greedy_token(logits: torch.Tensor) -> int:
    """The index of the largest of ``[vocab]`` ``logits`` (the first of equal ones; the first
    NaN if any), as ``torch.argmax`` gives it. Reads ``logits``; changes nothing."""
    if not numpy_views(logits):  # bfloat16, or not on the CPU
        return int(torch.argmax(logits))
    return int(logits.detach().numpy().argmax())

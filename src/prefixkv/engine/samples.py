"""n samples of one prompt (OpenAI's ``n``): one Request per sample, over the same prompt.

The samples differ only in their seed stream: a seeded request's sample ``i`` draws from
``seed + i`` (wrapped into the 64-bit range ``torch.Generator.manual_seed`` takes), so each
sample is reproducible on its own and sample 0 is exactly the request sent with ``n = 1``;
an unseeded request's samples each seed their generator from the OS. Each sample's Decoding
builds its own logits processors (penalties count that sample's tokens only).

The prompt is prefilled once by the runners' prefix cache, not by a mechanism of its own:
the batch runner holds a sample back while another running sequence of its namespace is
prefilling the block it would compute next (``BatchRunner._in_flight``), so the first sample
prefills and indexes every full block of the prompt and the others open their tables over
those blocks, pinned and reference counted by the pool like any cached prefix. The partial
last block is recomputed per sample (at most ``block_size`` tokens, and at least the last
prompt token whose logits each sample needs anyway) rather than copied on write: a shared
block would need a copy of every layer's keys and values per sample at the first write, and
the pool has no copy operation for that, where recomputing a few tokens is one more row
in a step the sample runs anyway. The serial runner runs the samples one after another,
each from the prompt the first one cached.
"""

from __future__ import annotations

import dataclasses

from prefixkv.engine.request import SEED_MAX, InvalidRequestError, Request

MAX_N = 16
"""Most samples one request may ask for (each holds its own KV past the shared prompt)."""


def check_n(n: object) -> int:
    """``n`` as given in a request body (an integer in ``[1, MAX_N]``); raises
    InvalidRequestError naming ``n`` otherwise."""
    if isinstance(n, bool) or not isinstance(n, int):
        got = "null" if n is None else type(n).__name__
        raise InvalidRequestError(f"n must be an integer, got {got}", "n", "invalid_type")
    if not 1 <= n <= MAX_N:
        raise InvalidRequestError(f"n must be in [1, {MAX_N}], got {n}", "n")
    return n


def samples_of(request: Request, n: int) -> tuple[Request, ...]:
    """``n`` Requests over ``request``'s prompt, sample ``i`` seeded ``seed + i`` (see the
    module docstring); the first is ``request`` itself. Raises InvalidRequestError for an
    ``n`` out of ``[1, MAX_N]``."""
    check_n(n)
    seed = request.params.seed
    if seed is None:
        return (request,) * n
    return tuple(
        dataclasses.replace(
            request, params=dataclasses.replace(request.params, seed=sample_seed(seed, i))
        )
        for i in range(n)
    )


def sample_seed(seed: int, index: int) -> int:
    """Sample ``index``'s seed: ``seed + index``, wrapped by 2**64 past ``SEED_MAX`` (the
    result then lies in ``[0, index)``, inside the accepted range)."""
    derived = seed + index
    return derived - (1 << 64) if derived > SEED_MAX else derived

"""The claims every served family's tests check, on a tiny model of the family
(:mod:`tests.models.tiny_families`) through the ``torch`` and ``native`` linear kernels:

- the registry finds its family by ``config.model_type``;
- greedy tokens are the same cached and uncached through the engine;
- the batch runner gives each request the tokens it gets alone;
- the engine's greedy tokens are transformers' own ``generate(do_sample=False)``'s for the
  same weights, up to a near tie (:data:`TIE`) at the first token where they part;
- the native kernel swaps exactly the norms and MLPs the family claims, none of the claimed
  classes is left, and the logits stay transformers' up to rounding (a claim whose math
  does not match, e.g. a wrong ``[gate | up]`` order, moves them far more).

A family's test module defines the ``case`` fixture (its :class:`Case`: its tiny config and
the swaps it claims) and takes the tests below with ``from .checks import *`` (``__all__``:
the fixtures and tests): adding a family adds one test module.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from prefixkv import NullCache, PrefixKVCache
from prefixkv.engine import linear
from prefixkv.engine.batch.runner import BatchLimits, BatchRunner
from prefixkv.engine.engine import Engine
from prefixkv.engine.kvbridge import layout_of
from prefixkv.engine.native_layers import NativeGatedMLP, NativeRMSNorm
from prefixkv.engine.request import SamplingParams
from prefixkv.models import family_of
from prefixkv.models.family import text_config
from tests.engine.batch.test_runner import Sink, drive
from tests.engine.conftest import one_thread
from tests.engine.kernel_matrix import unavailable
from tests.engine.tiny import tiny_tokenizer

from .tiny_families import tiny_model

__all__ = [
    "kernel",
    "models",
    "test_batched_requests_match_each_alone",
    "test_greedy_tokens_are_transformers_own",
    "test_greedy_tokens_match_cached_and_uncached",
    "test_the_native_kernel_swaps_what_the_family_claims",
    "test_the_registry_finds_the_family",
]

BLOCK = 4
KERNELS = ("torch", "native")
TIE = 1e-3
"""A top-2 logit gap below this is a tie that rounding (native against PyTorch kernels) may
flip; where transformers' and the engine's tokens part at a wider gap, the test fails."""


@dataclass(frozen=True)
class Case:
    """A family under test: the config of its tiny model, and what the native kernel's swaps
    must count on it."""

    family: str
    config: Callable[[], Any]
    """transformers' own config of the family's tiny model (a new one each call)."""
    norms: int
    mlps: int

    def model(self, seed: int = 0) -> Any:
        return tiny_model(self.config(), seed)


def _ids(seed: int, n: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(5, 80) for _ in range(n)]


SHARED = _ids(1, 22)
PROMPTS = [SHARED + _ids(2, 5), SHARED + _ids(3, 9), SHARED[:9] + _ids(4, 3), _ids(5, 11), [9]]


@pytest.fixture(params=KERNELS)
def kernel(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def models(case: Case, kernel: str) -> Iterator[tuple[Any, Any]]:
    """The family's tiny model as transformers built it, and a copy on ``kernel``."""
    with one_thread():
        plain = case.model()
        model = copy.deepcopy(plain)
        try:
            linear.linear_kernel(kernel, model).install(model)
        except RuntimeError as exc:
            unavailable(f"linear kernel {kernel!r} cannot run here: {exc}")
        yield plain, model


def engines(model: Any, blocks: int = 256) -> tuple[Engine, Engine]:
    """A cached engine over ``model`` and the same model uncached."""
    lay = layout_of(model.config, torch.float32)
    cached = Engine(
        model, tiny_tokenizer(), PrefixKVCache(lay, BLOCK, lay.block_bytes(BLOCK) * blocks)
    )
    return cached, cached.with_cache(NullCache(lay, BLOCK))


def test_the_registry_finds_the_family(case: Case) -> None:
    assert family_of(case.model()).name == case.family


def test_greedy_tokens_match_cached_and_uncached(models: tuple[Any, Any]) -> None:
    cached, plain = engines(models[1])
    cached.generate(PROMPTS[0], max_tokens=6)
    for prompt in PROMPTS:
        hit = cached.generate(prompt, max_tokens=8)
        assert hit.token_ids == plain.generate(prompt, max_tokens=8).token_ids
    assert cached.generate(PROMPTS[1], max_tokens=8).cached_tokens > 0
    cached.cache.check_invariants()


def test_batched_requests_match_each_alone(models: tuple[Any, Any]) -> None:
    cached, plain = engines(models[1])
    runner = BatchRunner(cached, BatchLimits(max_running=4, max_batch_tokens=12))
    sinks = []
    for prompt in PROMPTS:
        sinks.append(Sink())
        runner.submit(cached.request(prompt, SamplingParams(max_tokens=6)), sinks[-1])
    drive(runner)
    for prompt, sink in zip(PROMPTS, sinks, strict=True):
        assert sink.completion.token_ids == plain.generate(prompt, max_tokens=6).token_ids
    assert cached.cache.stats().pinned_blocks == 0


def test_greedy_tokens_are_transformers_own(models: tuple[Any, Any]) -> None:
    plain, model = models
    _, engine = engines(model)
    for prompt in PROMPTS[:3]:
        got = list(engine.generate(prompt, max_tokens=8).token_ids)
        ids = torch.tensor([prompt])
        with torch.inference_mode():
            out = plain.generate(
                ids, attention_mask=torch.ones_like(ids), max_new_tokens=len(got), do_sample=False
            )
        want = out[0, len(prompt) :].tolist()
        parted = next((i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b), None)
        if parted is not None:  # only a near tie may flip
            with torch.inference_mode():
                logits = plain(torch.tensor([prompt + want[:parted]])).logits[0, -1]
            top = torch.topk(logits, 2).values
            gap = float(top[0] - top[1])
            assert gap < TIE, f"tokens part at {parted} with a top-2 gap of {gap:.3g}"


def logits_around_native_install(model: Any, shape: tuple[int, int]) -> tuple[Any, Any]:
    """``model``'s logits for random ids of ``shape``, before and after the native linear
    kernel is installed in it (skipped where it cannot run); mutates ``model``."""
    with one_thread():
        ids = torch.randint(0, text_config(model.config).vocab_size, shape)
        with torch.inference_mode():
            before = model(ids).logits
            try:
                linear.linear_kernel("native", model).install(model)
            except RuntimeError as exc:
                unavailable(f"linear kernel 'native' cannot run here: {exc}")
            return before, model(ids).logits


def test_the_native_kernel_swaps_what_the_family_claims(case: Case) -> None:
    model = case.model(seed=3)
    before, after = logits_around_native_install(model, (2, 40))
    kinds = [type(m) for m in model.modules()]
    assert (kinds.count(NativeRMSNorm), kinds.count(NativeGatedMLP)) == (case.norms, case.mlps)
    family = family_of(model)
    claimed = family.norms + family.offset_norms
    claimed += tuple(c for mlp in family.mlps for c in mlp.classes)
    assert not any(k in claimed for k in kinds)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    assert torch.equal(after.argmax(-1), before.argmax(-1))

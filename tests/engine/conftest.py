"""Fixtures the engine's tests share: the tiny model on PyTorch's own linear layers
(``parts``), and on each linear kernel the engine can choose (``kernel_parts``, see
kernel_matrix.py), each built once per test module on one torch thread; and the real
SmolLM2 with its default weights (``smollm2_engine``), loaded once per session."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from prefixkv import PrefixKVCache
from prefixkv.engine.engine import Engine

from .kernel_matrix import LINEAR_KERNELS, kernel_llama
from .tiny import tiny_llama, tiny_tokenizer


@contextmanager
def one_thread() -> Iterator[None]:
    # One torch thread, as the tiny servers run (--threads 1): on matrices this small a second
    # thread gains nothing (test_engine.py: 5.6 s either way on an idle 2-core machine) and
    # costs a lot once other processes compete for the cores (4.7 s on one thread, 32 s on two).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def parts() -> Iterator[tuple[Any, Any]]:
    """The model on PyTorch's own linear layers, for the tests that are not about exactness."""
    with one_thread():
        yield tiny_llama(), tiny_tokenizer()


@pytest.fixture(scope="module", params=LINEAR_KERNELS)
def kernel_parts(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Any]]:
    """The model on each linear kernel the engine can choose, ``auto`` (the default) first."""
    with one_thread():
        yield kernel_llama(request.param), tiny_tokenizer()


@pytest.fixture(scope="session")
def smollm2_engine() -> Engine:
    """SmolLM2 as ``Engine.from_pretrained("smollm2")`` loads it (``--weights auto``), once
    per session (per worker under xdist): a load takes 5-15 s and five modules use it. Only
    for tests that read the model and tokenizer; what a test changes, it changes in its own
    cache (:func:`with_own_cache`), never in this engine's."""
    return Engine.from_pretrained("smollm2", cache_bytes=1 << 24)


def with_own_cache(engine: Engine, capacity_bytes: int) -> Engine:
    """``engine``'s model and tokenizer over a new, empty cache of ``capacity_bytes``, of the
    geometry ``from_pretrained`` gave its own (what ``from_pretrained(cache_bytes=...)``
    would have built)."""
    cache = engine.cache
    assert isinstance(cache, PrefixKVCache)
    return engine.with_cache(PrefixKVCache(cache.layout, cache.block_size, capacity_bytes))

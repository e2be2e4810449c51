"""Fixtures the engine's tests share: the tiny model on PyTorch's own linear layers
(``parts``), and on each linear kernel the engine can choose (``kernel_parts``, see
kernel_matrix.py), each built once per test module on one torch thread."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

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

"""The tiny model the batch runner tests share: on PyTorch's own linear layers (``parts``), and
on each linear kernel the engine can choose (``kernel_parts``, see ../kernel_matrix.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from ..kernel_matrix import LINEAR_KERNELS, kernel_llama
from ..tiny import tiny_llama, tiny_tokenizer


@contextmanager
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/engine/test_engine.py
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def parts() -> Iterator[tuple[Any, Any]]:
    with one_thread():
        yield tiny_llama(), tiny_tokenizer()


@pytest.fixture(scope="module", params=LINEAR_KERNELS)
def kernel_parts(request: pytest.FixtureRequest) -> Iterator[tuple[Any, Any]]:
    with one_thread():
        yield kernel_llama(request.param), tiny_tokenizer()

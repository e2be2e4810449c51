"""The tiny model the batch runner tests share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from ..tiny import tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def parts() -> Iterator[tuple[Any, Any]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see tests/engine/test_engine.py
    try:
        yield tiny_llama(), tiny_tokenizer()
    finally:
        torch.set_num_threads(threads)

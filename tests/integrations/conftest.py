"""SGLang sets variables in ``os.environ`` for its own processes when it is imported and when
it builds its extensions (TRITON_CACHE_DIR, TORCHINDUCTOR_CACHE_DIR, CUDA_CACHE_PATH, ...).
Each test module here gets the environment back as it found it, so that the tests running
after these in the same session see the environment they would see alone."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="module", autouse=True)
def _restore_environment() -> Iterator[None]:
    saved = dict(os.environ)
    yield
    if os.environ != saved:
        os.environ.clear()
        os.environ.update(saved)

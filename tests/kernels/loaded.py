"""The loaded native kernels for tests: a failure (not a skip) where they do not build,
naming why (CI has a compiler)."""

from __future__ import annotations

import pytest

from prefixkv.kernels.build import NativeUnavailable
from prefixkv.kernels.ops import Kernels, load


def loaded() -> Kernels:
    """:func:`prefixkv.kernels.ops.load`, or the test fails saying why it cannot."""
    try:
        return load()
    except NativeUnavailable as exc:
        pytest.fail(f"the native kernels do not build here: {exc}")

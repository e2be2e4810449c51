"""The index layer needs NumPy only: importing it must not import torch."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.process  # a fresh interpreter (torch is already loaded in this one)
def test_importing_the_index_and_tokens_loads_no_torch() -> None:
    """Nor does the native descent's door, built (or found in the cache) and used."""
    code = (
        "import sys, array\n"
        "import prefixkv.index, prefixkv.tokens\n"
        "index = prefixkv.index.PrefixIndex(4)\n"
        "index.insert(array.array('q', range(8)), ['a', 'b'])\n"
        "assert index.match(list(range(8))).values == ('a', 'b')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'prefixkv.kernels.build' not in sys.modules, 'the build machinery was'\n"
        "from prefixkv.index.native import native_descent\n"
        "index = prefixkv.index.PrefixIndex(4, native=native_descent())\n"
        "index.insert(array.array('q', range(8)), ['a', 'b'])\n"
        "assert index.match(array.array('q', range(8))).values == ('a', 'b')\n"
        "assert 'torch' not in sys.modules, 'the native descent imported torch'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

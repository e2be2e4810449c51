"""The index layer needs NumPy only: importing it must not import torch."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.process  # a fresh interpreter (torch is already loaded in this one)
def test_importing_the_index_and_tokens_loads_no_torch() -> None:
    code = (
        "import sys, array\n"
        "import prefixkv.index, prefixkv.tokens\n"
        "index = prefixkv.index.PrefixIndex(4)\n"
        "index.insert(array.array('q', range(8)), ['a', 'b'])\n"
        "assert index.match(list(range(8))).values == ('a', 'b')\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

"""The sanitizer build is live: a call that goes around the door with a bound the door would
have refused is caught by AddressSanitizer, which names the overflow and ends the process.

``make test-kernels-asan`` runs tests/kernels against that build; this canary shows that a
pass there means something (a library built without the sanitizers, or without their
runtime, would let the bad call through)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from prefixkv.kernels.build import SANITIZE_VARIABLE

BYPASS = """
import torch
from prefixkv.kernels import abi, build
library = build.load()  # the raw library: the door (prefixkv.kernels.ops) is bypassed
abi.declare(library)
x, weight, out = torch.randn(2, 16), torch.ones(16), torch.empty(2, 16)
# 64 rows where x and out hold 2: the door would have refused this shape
library.prefixkv_rms_norm(x.data_ptr(), 64, 16, 16, weight.data_ptr(), 1e-5, out.data_ptr())
print("not caught")
"""


def runtime(name: str) -> str:
    """The path of sanitizer runtime ``name`` (``libasan.so``) of the C compiler; fails the
    test when the compiler has none."""
    cc = os.environ.get("CC", "cc")
    asked = subprocess.run([cc, f"-print-file-name={name}"], capture_output=True, text=True)
    path = asked.stdout.strip()
    if not os.path.isabs(path):  # an unknown file is printed back as its bare name
        pytest.fail(f"{cc} has no {name}: install its sanitizer runtimes (Debian: libasan8)")
    return path


@pytest.mark.process
@pytest.mark.sanitizer
def test_asan_catches_a_call_that_bypasses_the_door(tmp_path: Path) -> None:
    script = tmp_path / "bypass.py"
    script.write_text(BYPASS)
    env = {
        **os.environ,
        SANITIZE_VARIABLE: "1",
        "ASAN_OPTIONS": "detect_leaks=0",
        "LD_PRELOAD": f"{runtime('libasan.so')} {runtime('libubsan.so')}",
        "PYTHONPATH": os.pathsep.join(sys.path),
    }
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         env=env, timeout=600)  # fmt: skip
    assert "not caught" not in run.stdout
    assert run.returncode != 0
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in run.stderr, run.stderr[-3000:]
    assert "prefixkv_rms_norm" in run.stderr  # the report names the kernel

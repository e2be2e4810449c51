"""A real, small tmpfs: a disk that fills for real. Mounting needs root (CI runs as root);
where it is not allowed, the test that asks for one is skipped, saying why, unless
``PREFIXKV_REQUIRE_TMPFS=1`` (``.ci/run`` sets it): then it fails."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REQUIRE = "PREFIXKV_REQUIRE_TMPFS"


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (``mount -o size=``, e.g. ``256k``) at ``path`` (created),
    unmounted after the block. Starts processes: the test must be marked ``process``. Skips
    the test where it cannot mount (fails it under ``PREFIXKV_REQUIRE_TMPFS=1``)."""
    path.mkdir()
    error = _mount(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)])
    if error:
        message = f"cannot mount a tmpfs here: {error}"
        if os.environ.get(REQUIRE) == "1":
            pytest.fail(f"{message} ({REQUIRE}=1: the full-disk tests must run)", pytrace=False)
        pytest.skip(message)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def _mount(command: list[str]) -> str:
    """Run ``command``; "" when it succeeded, else why it did not."""
    try:
        done = subprocess.run(command, capture_output=True)
    except OSError as exc:  # no mount command at all
        return str(exc)
    if done.returncode == 0:
        return ""
    return done.stderr.decode().strip() or f"mount exited with status {done.returncode}"

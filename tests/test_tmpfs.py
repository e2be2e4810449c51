"""tests/tmpfs.py: where a tmpfs cannot be mounted, the full-disk tests skip saying why, and
fail under PREFIXKV_REQUIRE_TMPFS=1 (set by .ci/run), so that CI cannot pass without them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests import tmpfs as module


def refused(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.CompletedProcess(command, 32, b"", b"mount: only root can do that")


def missing(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    raise FileNotFoundError(2, "No such file or directory", command[0])


@pytest.mark.parametrize("mount", [refused, missing], ids=["not-root", "no-mount-command"])
@pytest.mark.parametrize("required", [False, True], ids=["skips", "fails-when-required"])
def test_an_unmountable_tmpfs_skips_or_fails_when_required(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mount: Any, required: bool
) -> None:
    monkeypatch.setattr(module.subprocess, "run", mount)
    if required:
        monkeypatch.setenv(module.REQUIRE, "1")
    else:
        monkeypatch.delenv(module.REQUIRE, raising=False)
    outcome = pytest.fail.Exception if required else pytest.skip.Exception
    # Both caught, so that a skip where a failure is due fails this test instead of skipping it.
    ended = (pytest.fail.Exception, pytest.skip.Exception)
    with pytest.raises(ended) as raised, module.tmpfs(tmp_path / "disk", "1m"):
        pytest.fail("the block ran without a tmpfs")
    assert raised.type is outcome
    assert re.match(r"cannot mount a tmpfs here: .*(root|No such file)", str(raised.value))

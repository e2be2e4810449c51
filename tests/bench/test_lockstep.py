"""benchmarks/lockstep.py: two builds replay a workload a step each in turn and agree."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.process
@pytest.mark.smollm2
def test_two_sides_replay_in_lockstep_with_identical_replies() -> None:
    """Both sides on the native kernel (one by name, one by auto): every reply must match."""
    options = {
        "--a-kernel": "auto",
        "--b-kernel": "native",
        "--clients": "2",
        "--requests-per-client": "2",
        "--sentences": "3",
        "--max-tokens": "4",
        "--seeds": "0",
    }
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "lockstep.py"), *sum(options.items(), ())],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "# b: b (" in run.stdout and ", native)" in run.stdout
    lines = [line for line in run.stdout.splitlines() if line.startswith("seed ")]
    assert [line.split(":")[0] for line in lines] == ["seed 1000", "seed 0"]
    for line in lines:
        seconds = [float(x) for x in re.findall(r" ([0-9.]+) s \(", line)]
        assert len(seconds) == 2 and all(s > 0 for s in seconds), line
        assert line.endswith("same replies 4/4"), line

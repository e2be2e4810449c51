"""``prefixkv explain`` (the CLI) against a real ``prefixkv serve`` on the tiny model: a
served conversation is a hit, a changed system prompt diverges where it changed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .harness import ServerProcess

pytestmark = [pytest.mark.process, pytest.mark.slow]

MESSAGES: Any = [
    {"role": "system", "content": "You are a lighthouse keeper. Be brief."},
    {"role": "user", "content": "Is the lamp lit tonight?"},
]


def run_cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "prefixkv.cli", "explain", "--url", server.url, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_the_cli_explains_a_hit_and_a_divergence(
    tiny_server: ServerProcess, tmp_path: Path
) -> None:
    salt = "explain-cli"
    tiny_server.client().chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=4, extra_body={"cache_salt": salt}
    )
    served = tmp_path / "served.json"
    served.write_text(json.dumps(MESSAGES))
    hit = run_cli(tiny_server, "--messages", str(served), "--salt", salt, "--json")
    assert hit.returncode == 0, hit.stderr
    answer = json.loads(hit.stdout)
    assert answer["reason"] in ("hit", "partial_block")
    assert set(answer["miss_tokens"]) <= {"partial_block"}
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps([{**MESSAGES[0], "content": "You are a ferryman."}, MESSAGES[1]]))
    diverged = run_cli(tiny_server, "--messages", str(changed), "--salt", salt)
    assert diverged.returncode == 0, diverged.stderr
    assert "reason: diverged" in diverged.stdout
    assert "message 0, system, an earlier turn" in diverged.stdout
    assert "'ferryman." in diverged.stdout and "'lighthouse keeper." in diverged.stdout
    missing = run_cli(tiny_server)
    assert missing.returncode == 2 and "give a prompt or --messages" in missing.stderr

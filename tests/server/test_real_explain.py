"""``prefixkv explain`` (the CLI) against a real ``prefixkv serve`` on the tiny model: a
served conversation is a hit, a changed system prompt diverges where it changed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import tiny_server_process
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


def test_offline_explain_replays_the_servers_request_log(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """A server's request log, replayed by ``prefixkv explain --log`` with the server's
    model: the served conversation hits in its salt, a changed last turn diverges after the
    shared system prompt, another salt is cold, and a replay at two blocks evicted it."""
    log = tmp_path / "requests.jsonl"
    servers = tiny_server_process(
        tiny_model_dir, tmp_path_factory, "explain-log", "--request-log", str(log)
    )
    server = next(servers)
    try:
        server.client().chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=4, extra_body={"cache_salt": "s"}
        )
        later = [MESSAGES[0], {"role": "user", "content": "What ships passed?"}]
        server.client().chat.completions.create(
            model="tiny", messages=later, max_tokens=4, extra_body={"cache_salt": "other"}
        )
    finally:
        next(servers, None)  # stops the server: every line is written
    served, changed = tmp_path / "served.json", tmp_path / "changed.json"
    served.write_text(json.dumps(MESSAGES))
    changed.write_text(json.dumps([MESSAGES[0], {"role": "user", "content": "Is it foggy?"}]))

    def offline(*args: str) -> dict[str, Any]:
        command = [sys.executable, "-m", "prefixkv.cli", "explain", "--log", str(log),
                   "--model", str(tiny_model_dir), "--json", *args]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, done.stderr
        answer: dict[str, Any] = json.loads(done.stdout)
        return answer

    hit = offline("--messages", str(served), "--salt", "s")
    assert hit["reason"] in ("hit", "partial_block") and hit["requests"] == 2
    assert hit["hit_tokens"] == hit["prompt_tokens"] // 4 * 4
    diverged = offline("--messages", str(changed), "--salt", "s")
    assert diverged["reason"] == "diverged" and 0 < diverged["hit_blocks"] < hit["hit_blocks"]
    assert offline("--messages", str(served), "--salt", "third")["reason"] == "cold"
    block_bytes = json.loads(log.read_text().splitlines()[0])["block_bytes"]
    small = offline("--messages", str(served), "--salt", "s", "--cache-bytes", str(2 * block_bytes))
    assert small["reason"] == "evicted" and small["eviction"]["request"] == 2

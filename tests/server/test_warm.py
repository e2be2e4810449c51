"""``prefixkv warm FILE`` against a real ``prefixkv serve`` (the tiny model): each line is
prefilled, a later request on it finds it cached; with ``--pin-ttl`` each is pinned."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from prefixkv.cli import main

from .harness import ServerProcess, wait_for

pytestmark = [pytest.mark.process, pytest.mark.slow]

SYSTEM = "You are the warm-up test's assistant. Keep answers to one line."


def write_lines(path: Path, salt: str) -> None:
    chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hello"}]
    items = [
        {"prompt": f"A document about warming caches ({salt}). " * 3, "cache_salt": salt},
        {"messages": chat, "cache_salt": salt},
        "x",  # one token: nothing to keep, still fine
        {"neither": 1},
    ]
    path.write_text("\n".join(json.dumps(item) for item in items) + "\n")


def test_warm_then_hit(
    tiny_server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "prompts.jsonl"
    write_lines(file, "warm-1")
    assert main(["warm", str(file), "--url", tiny_server.url]) == 1  # the bad line
    out, err = capsys.readouterr()
    assert "line 1: " in out and "0 were cached" in out and "line 4: not warmed" in err
    assert "1 line(s) failed" in out
    chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hello"}]
    reply = tiny_server.client().chat.completions.create(
        model="tiny",
        messages=chat,
        max_tokens=2,
        extra_body={"cache_salt": "warm-1"},  # type: ignore[arg-type]
    )
    assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
    cached = reply.usage.prompt_tokens_details.cached_tokens or 0
    assert cached == (reply.usage.prompt_tokens - 1) // 4 * 4 > 0


def test_warm_and_pin(
    tiny_server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "prompts.jsonl"
    write_lines(file, "warm-2")
    file.write_text("\n".join(file.read_text().splitlines()[:2]) + "\n")
    assert main(["warm", str(file), "--url", tiny_server.url, "--pin-ttl", "1.5"]) == 0
    out = capsys.readouterr().out
    assert out.count("pinned for 1.5 s") == 2
    assert tiny_server.stats()["pinned_blocks"] > 0
    time.sleep(1.6)  # the pins end: the session's server is left as it was
    assert wait_for(lambda: tiny_server.stats()["pinned_blocks"] == 0)

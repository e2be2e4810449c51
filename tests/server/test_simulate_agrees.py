"""``prefixkv simulate`` against the real thing: a real ``prefixkv serve`` on the tiny model,
with a small cache under eviction pressure, logs its traffic; replayed at the server's own
cache size and policy, the simulated token hit rate is the one the server's replies
reported (within 3 points; when written, the replay found exactly the served tokens:
3,452 of 6,825 under LRU, 3,576 under LFU)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from prefixkv.cli import main
from prefixkv.cli.simulate import model_block_bytes
from prefixkv.whatif.records import read_log

from .harness import ServerProcess

pytestmark = [pytest.mark.process, pytest.mark.slow]

CACHE = "96KiB"  # 48 blocks of 4 tokens of the tiny model's 2 KiB: a few prompts' worth
DOCUMENTS = [f"Document {d}: " + "the quick brown fox jumps. " * (2 + d % 3) for d in range(6)]


def traffic(seed: int = 7) -> list[list[dict[str, str]]]:
    """60 chats over six shared documents, most asked about the popular ones, a few
    follow-ups that repeat an earlier turn: hits, misses and evictions."""
    rng = random.Random(seed)
    chats = []
    for i in range(60):
        doc = DOCUMENTS[min(int(rng.expovariate(0.6)), len(DOCUMENTS) - 1)]
        chats.append(
            [{"role": "system", "content": doc}, {"role": "user", "content": f"Q{i % 7}?"}]
        )
    return chats


@pytest.mark.parametrize("policy", ["lru", "lfu"])
def test_simulated_hit_rate_is_the_served_one(
    policy: str, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "requests.jsonl"
    args = ["--model", str(tiny_model_dir), "--cache-bytes", CACHE, "--block-size", "4",
            "--threads", "1", "--request-log", str(log), "--eviction-policy", policy]  # fmt: skip
    server = ServerProcess(args, tmp_path / "server.log").wait_ready()
    try:
        client = server.client()
        cached = prompt = 0
        for messages in traffic():
            common: Any = {"model": "tiny", "messages": messages, "temperature": 0}
            reply = client.chat.completions.create(**common, max_tokens=6)
            assert reply.usage is not None and reply.usage.prompt_tokens_details is not None
            cached += reply.usage.prompt_tokens_details.cached_tokens or 0
            prompt += reply.usage.prompt_tokens
        stats = server.stats()
    finally:
        assert server.stop() == 0, server.output()
    served = cached / prompt
    assert 0.2 < served < 0.9, served  # hits and evictions both happened
    assert stats["evicted_blocks"] > 0
    records = list(read_log(log))
    assert len(records) == 60
    assert records[0].block_bytes == model_block_bytes(str(tiny_model_dir), 4)
    assert main(["simulate", "--log", str(log), "--cache-bytes", f"{CACHE},1MiB",
                 "--policy", policy, "--model", str(tiny_model_dir),
                 "--plot", str(tmp_path / "c.png")]) == 0  # fmt: skip
    rows = {row[0]: row for row in map(str.split, capsys.readouterr().out.splitlines()) if row}
    assert rows[CACHE][2] == policy
    simulated = float(rows[CACHE][3].rstrip("%")) / 100
    assert abs(simulated - served) <= 0.03, (simulated, served)
    assert float(rows["1MiB"][3].rstrip("%")) / 100 >= simulated  # no eviction: every repeat

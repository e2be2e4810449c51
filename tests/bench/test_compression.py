"""``prefixkv bench compression`` end to end on a tiny random Llama (a smoke test: the
figures of a random model mean nothing, their shape and the none codec's exactness do)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from prefixkv.bench import compression

from ..engine.tiny import tiny_llama, tiny_tokenizer


@pytest.fixture
def tiny_dir(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "tiny"
    model = tiny_llama()
    model.config.max_position_embeddings = 4096  # the suite's prompts in characters
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # matrices this small gain nothing from a second thread
    try:
        yield folder
    finally:
        torch.set_num_threads(threads)


def test_bench_prints_one_line_per_codec_and_writes_json(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "compression.json"
    argv = ["--model", str(tiny_dir), "--prompts", "3", "--max-tokens", "4", "--repeats", "1"]
    assert compression.main([*argv, "--out", str(out)]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("compression ")]
    assert [x.split()[1].rstrip(":") for x in lines] == ["none", "int8", "int4"]
    report = json.loads(out.read_text())
    rows = {row["codec"]: row for row in report["rows"]}
    none, int8, int4 = rows["none"], rows["int8"], rows["int4"]
    # tiny Llama: 2 layers, 2 kv heads, head_dim 16; blocks of 16 tokens
    assert none["bytes_per_token"] == 2 * 2 * 2 * 16 * 4 == none["fp32_bytes_per_token"]
    assert int8["bytes_per_token"] == 2 * 2 * 2 * 16 + 4 * 2 * 2 * (16 + 16) / 16
    assert int4["bytes_per_token"] == 2 * 2 * 2 * 16 / 2 + 4 * 2 * 2 * (16 + 16) / 16
    assert none["blocks_per_gib"] < int8["blocks_per_gib"] < int4["blocks_per_gib"]
    assert none["prompts"] == 3 and len(none["per_prompt"]) == 3
    # the none codec hands back the exact KV: the same split with the same numbers
    assert none["identical"] == 3 and none["mean_first_divergence"] is None
    assert none["top1_agreement"] == 1.0 and none["mean_kl"] == 0.0
    for row in rows.values():
        assert 0 <= row["top1_agreement"] <= 1 and row["restore_ms_per_1k"] > 0
        assert row["recompute_ms_per_1k"] == none["recompute_ms_per_1k"] > 0


def test_first_divergence() -> None:
    assert compression.first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert compression.first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert compression.first_divergence([1, 2], [1, 2, 3]) == 2  # one stopped early

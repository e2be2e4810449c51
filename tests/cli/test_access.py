"""``prefixkv serve`` fails closed: off loopback it needs a key or ``--allow-anonymous``,
decided before the model loads; and the parser never quotes a value given to a mistyped
option."""

from __future__ import annotations

from pathlib import Path

import pytest

from prefixkv.cli import commands as cli
from prefixkv.cli.options import Parser, add_option, positive_int
from prefixkv.cli.serving import secret_keys, server_settings

MISSING = "no-model-here"


def serve(tmp_path: Path, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """``prefixkv serve`` on a model that does not exist: (exit status, stderr). A run that
    got past the access checks fails at the model, naming it."""
    status = cli.main(["serve", "--model", str(tmp_path / MISSING), *argv])
    return status, capsys.readouterr().err


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.org", ""])
def test_off_loopback_without_a_key_is_refused_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], host: str
) -> None:
    status, err = serve(tmp_path, capsys, "--host", host)
    assert status == 2 and err.count("\n") == 1
    assert "--api-key" in err and "--allow-anonymous" in err and "refusing" in err
    assert MISSING not in err  # refused before trying to load the model


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--host", "0.0.0.0", "--allow-anonymous"], {}),
        (["--host", "0.0.0.0"], {"PREFIXKV_ALLOW_ANONYMOUS": "yes"}),
    ],
)
def test_allow_anonymous_starts_with_a_warning(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    argv: list[str],
    env: dict[str, str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    status, err = serve(tmp_path, capsys, *argv)
    assert status == 2 and MISSING in err  # went on to load the model
    assert "warning: serving on 0.0.0.0 without keys" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--host", "0.0.0.0", "--api-key", "k"],
        ["--host", "0.0.0.0", "--admin-key", "k"],
        ["--host", "127.0.0.1"],
        ["--host", "localhost"],
        ["--host", "::1"],
        ["--host", "127.8.9.10"],
    ],
)
def test_a_key_or_loopback_starts_without_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    status, err = serve(tmp_path, capsys, *argv)
    assert status == 2 and MISSING in err and "warning" not in err


def test_allow_anonymous_with_keys_is_a_contradiction(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = serve(tmp_path, capsys, "--api-key", "k", "--allow-anonymous")
    assert status == 2 and "--allow-anonymous" in err and MISSING not in err


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["serve", "--api-keys", "SECRET"], "--api-keys and 1 value(s)"),
        (["serve", "--api-keys=SECRET"], "--api-keys and 1 value(s)"),
        (["serve", "--admin", "SECRET"], "--admin and 1 value(s)"),  # no abbreviations
        (["serve", "--a=SECRET"], "--a and 1 value(s)"),
        (["serve", "--api-key", "k", "SECRET"], "1 value(s)"),
        (["--api-key", "SECRET", "serve"], "--api-key comes before the command"),
        (["-xSECRET", "serve"], "an option comes before the command"),
    ],
)
def test_mistyped_options_never_echo_their_values(
    capsys: pytest.CaptureFixture[str], argv: list[str], shown: str
) -> None:
    missing = ["--model", "no-model-here"]  # should the parser accept the mistake: a quick exit
    with pytest.raises(SystemExit) as exit_:
        cli.main([*argv, *missing])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and shown in err and "SECRET" not in err


@pytest.mark.parametrize("given", ["argv", "env"])
def test_a_secret_options_bad_value_is_not_echoed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], given: str
) -> None:
    """A typed secret option (as a future one may be): its error names the option or the
    variable, never the value nor the converter's message (which quotes it)."""
    monkeypatch.setenv("PREFIXKV_SOME_KEY", "SECRET-from-env")
    argv = ["--some-key", "SECRET-from-argv"] if given == "argv" else []
    parser = Parser(prog="p")
    add_option(parser, "--some-key", "a key", secret=True, type=positive_int)
    add_option(parser, "--count", "not a secret", type=positive_int)
    with pytest.raises(SystemExit):
        parser.parse_args(argv)
    err = capsys.readouterr().err
    assert "SECRET" not in err and "not shown" in err
    assert ("PREFIXKV_SOME_KEY" in err) == (given == "env") and "--some-key" in err
    with pytest.raises(SystemExit):
        parser.parse_args(["--some-key", "1", "--count", "many"])
    assert "'many'" in capsys.readouterr().err  # other options still quote their value


@pytest.mark.parametrize(
    ("argv", "public"),
    [
        (["--host", "127.0.0.1"], True),
        (["--host", "localhost"], True),
        (["--host", "0.0.0.0", "--allow-anonymous"], False),
        (["--host", "127.0.0.1", "--api-key", "k"], False),
        (["--host", "127.0.0.1", "--admin-key", "k"], False),
    ],
)
def test_metrics_are_public_only_on_a_keyless_loopback_server(
    argv: list[str], public: bool
) -> None:
    args = cli.build_parser().parse_args(["serve", *argv])
    keys = secret_keys(args.api_key, "--api-key")
    admin = secret_keys([args.admin_key] if args.admin_key else [], "--admin-key")
    settings = server_settings(args, "m", keys, admin)
    assert settings.public_metrics is public

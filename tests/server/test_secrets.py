"""No secret is ever printed: API keys, the admin key, the Redis password, the tier key.

Every path that prints runs here with distinctive secrets: the server's start-up banner and
log (at debug level) up to and through serving requests with right, wrong and missing keys,
its responses (401 and 403 bodies, /v1/models, the admin's stats and /metrics), ``--help`` of
every command, each secret option's error from the command line and from the environment,
the refusal to serve off loopback without a key, ``prefixkv chat``, and the errors of
ServerSettings. Nothing may contain a secret's marker.

Adding a secret is one line in ``SECRETS``: its option, its variable, a value the command
accepts and one it refuses, both holding ``secret(name)``. The tier key is the one secret
that cannot hold the markers (it is 64 hex digits): ``TIER_KEY`` is looked for instead, whole
and by its first and last 16 digits, in either case; it has no option (argv is public), only
its variable and a key file.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from prefixkv.cli import commands as cli
from prefixkv.cli.serving import banner
from prefixkv.redaction import redacted_url
from prefixkv.server import ServerSettings

from .conftest import TINY_ARGS, running_app
from .harness import ServerProcess, free_port

START, END = "S3CR3T", "T3RC3S"
"""Every secret is ``START-<name>-END``: output holding either marker shows (part of) one."""


def secret(name: str) -> str:
    return f"{START}-{name}-{END}"


DEAD_PORT = free_port()  # nothing listens there: the Redis tier starts down and logs it


class Secret(NamedTuple):
    flag: str
    env: str
    value: str
    """Accepted by the command."""
    invalid: str
    """Refused by the command (before the model loads)."""


SECRETS = [
    Secret("--api-key", "PREFIXKV_API_KEY", secret("api"), secret("api\u00e9")),
    Secret("--admin-key", "PREFIXKV_ADMIN_KEY", secret("admin"), secret("admin\x07")),
    Secret(
        "--redis-url",
        "PREFIXKV_REDIS_URL",
        f"redis://prefixkv:{secret('redis')}@127.0.0.1:{DEAD_PORT}/0",
        f"redis://prefixkv:{secret('re/dis')}@127.0.0.1:{DEAD_PORT}/0",  # '/' splits the URL
    ),
]
TIER_KEY = "5ec1e75eed" + "0123456789abcdef" * 3 + "c0ffee"
"""A valid tier key (64 hex digits) of distinctive text."""
TIER_KEY_PARTS = (TIER_KEY, TIER_KEY[:16], TIER_KEY[-16:])
SECRET_ENV = {s.env: s.value for s in SECRETS} | {"PREFIXKV_TIER_KEY": TIER_KEY}
API_KEY, ADMIN_KEY = secret("api"), secret("admin")


def assert_no_secret(text: str, where: str) -> None:
    """Fail naming ``where`` and quoting each line that shows a secret's marker or part of
    the tier key."""
    lines = [
        line
        for line in text.splitlines()
        if START in line or END in line or any(p in line.lower() for p in TIER_KEY_PARTS)
    ]
    assert not lines, f"a secret in {where}:\n" + "\n".join(lines)


def test_the_check_finds_a_secret() -> None:
    """The check itself can fail: on a whole secret, on its start or end only, on the tier
    key or a part of it in either case."""
    shown = [secret("x"), secret("x")[:8], secret("x")[-8:], *TIER_KEY_PARTS, TIER_KEY.upper()]
    for text in shown:
        with pytest.raises(AssertionError, match="a secret in here"):
            assert_no_secret(f"key: {text}\n", "here")


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in SECRET_ENV.items():
        monkeypatch.setenv(name, value)
    yield


@pytest.mark.process
def test_a_served_session_prints_no_secret(tiny_model_dir: Path, tmp_path: Path) -> None:
    """One server with every secret, at debug level, through requests that succeed and
    requests refused for a missing, wrong or not-admin key."""
    argv = [arg for s in SECRETS for arg in (s.flag, s.value)]
    args = ["--model", str(tiny_model_dir), *TINY_ARGS, "--log-level", "debug", *argv]
    args += ["--disk-cache", str(tmp_path / "disk")]  # tiers sealed with the tier key
    env = {"PREFIXKV_TIER_KEY": TIER_KEY}
    server = ServerProcess(args, tmp_path / "server.log", env=env, api_key=API_KEY).wait_ready()
    admin = server.headers(ADMIN_KEY)
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    try:
        answers = [
            server.post("/v1/chat/completions", json=chat),
            server.get("/v1/models"),
            server.get("/v1/cache/stats", headers=admin),
            server.get("/metrics", headers=admin),
        ]
        assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
        refused = [
            server.get("/v1/models", headers=server.headers(API_KEY + "x")),
            server.get("/v1/models", headers=server.headers(API_KEY[:-1])),
            server.post("/v1/chat/completions", json=chat, headers=server.headers(ADMIN_KEY * 2)),
            server.get("/v1/models", headers={}),
            server.get("/metrics"),  # the API key is not the admin's
        ]
        assert [r.status_code for r in refused] == [401, 401, 401, 401, 403]
    finally:
        status = server.stop()
    output = server.output()
    assert status == 0, output
    assert_no_secret(output, "the server's output")
    assert "+ redis redis://prefixkv:***@127.0.0.1" in output  # the banner, redacted
    assert "Redis tier redis://prefixkv:***@" in output  # its log line ran, redacted
    assert "tier records sealed" in output  # the key was read and used
    assert "401 invalid_api_key" in output  # the refusals were logged
    for response in answers + refused:
        assert_no_secret(f"{response.headers}\n{response.text}", response.request.url.path)


@pytest.mark.parametrize(
    "command", [[], ["serve"], ["chat"], ["bench"], *(["bench", name] for name in cli.BENCHES)]
)
def test_help_prints_no_secret(
    secret_env: None, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """Secrets in the environment and on the command line, then ``--help``."""
    given = [arg for s in SECRETS for arg in (s.flag, s.value)] if command == ["serve"] else []
    with pytest.raises(SystemExit) as exit_:
        cli.main([*command, *given, "--help"])
    out, err = capsys.readouterr()
    assert exit_.value.code == 0 and "usage:" in out
    assert_no_secret(out + err, f"prefixkv {' '.join(command)} --help")


@pytest.mark.parametrize("given", ["argv", "env"])
@pytest.mark.parametrize("option", SECRETS, ids=[s.flag for s in SECRETS])
def test_a_refused_secret_is_not_shown(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    option: Secret,
    given: str,
) -> None:
    argv = ["serve", "--model", str(tmp_path / "no-model-here")]
    if given == "argv":
        argv += [option.flag, option.invalid]
    else:
        monkeypatch.setenv(option.env, option.invalid)
    try:
        status = cli.main(argv)
    except SystemExit as exit_:  # refused by the parser
        status = int(str(exit_.code))
    err = capsys.readouterr().err
    assert status == 2 and (option.flag in err or option.env in err), err
    assert "no-model-here" not in err  # refused for the secret, before the model loads
    assert_no_secret(err, f"the error for {option.flag} from {given}")


@pytest.mark.parametrize("given", ["argv", "env"])
def test_the_off_loopback_refusal_prints_no_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], given: str
) -> None:
    """Only the secrets that are not keys (a key would let the server start)."""
    others = [s for s in SECRETS if s.flag not in ("--api-key", "--admin-key")]
    argv = ["serve", "--host", "0.0.0.0"]
    for option in others:
        if given == "argv":
            argv += [option.flag, option.value]
        else:
            monkeypatch.setenv(option.env, option.value)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "refusing to serve on 0.0.0.0" in err
    assert_no_secret(err, "the off-loopback refusal")


@pytest.mark.parametrize(
    ("source", "problem"),
    [("env", "not hex"), ("file", "not hex"), ("file", "readable by others")],
)
def test_a_refused_tier_key_is_not_shown(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    source: str,
    problem: str,
) -> None:
    """A tier key refused from its variable or its file: the error names the source and the
    fix, never the key (a valid one refused for its file's mode included)."""
    text = secret("tier") if problem == "not hex" else TIER_KEY
    argv = ["serve", "--model", str(tmp_path / "no-model-here"), "--disk-cache", str(tmp_path)]
    if source == "env":
        monkeypatch.setenv("PREFIXKV_TIER_KEY", text)
    else:
        key_file = tmp_path / "tier.key"
        key_file.write_text(text + "\n")
        key_file.chmod(0o644 if problem == "readable by others" else 0o600)
        argv += ["--tier-key-file", str(key_file)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert ("PREFIXKV_TIER_KEY" if source == "env" else "tier.key") in err, err
    assert "no-model-here" not in err  # refused for the key, before the model loads
    assert_no_secret(err, f"the error for a tier key from its {source}")


def test_chat_prints_no_secret(
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``prefixkv chat`` over the sealed Redis tier (down: it logs), one turn, in this
    process."""
    monkeypatch.setenv("PREFIXKV_REDIS_URL", SECRET_ENV["PREFIXKV_REDIS_URL"])
    monkeypatch.setenv("PREFIXKV_TIER_KEY", TIER_KEY)  # Redis is shared: sealed
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\n/quit\n"))
    argv = ["chat", "--model", str(tiny_model_dir), "--block-size", "4", "--max-tokens", "4"]
    with caplog.at_level(logging.DEBUG, logger="prefixkv"):
        assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert re.search(r"\[cached 0/\d+ prompt tokens", out)  # the turn ran
    assert "Redis tier redis://prefixkv:***@" in caplog.text  # and reached the tier
    assert_no_secret(out + err + caplog.text, "prefixkv chat")


@pytest.mark.parametrize(
    "keys",
    [
        {"api_keys": (f" {API_KEY}",)},
        {"admin_keys": (f"{ADMIN_KEY}\n",)},
        {"api_keys": (API_KEY,), "admin_keys": (API_KEY,)},
        {"api_keys": (API_KEY,), "public_metrics": True},
    ],
)
def test_settings_errors_show_no_key(keys: dict[str, object]) -> None:
    with pytest.raises(ValueError) as error:
        ServerSettings(model_names=("m",), **keys)  # type: ignore[arg-type]
    assert_no_secret(str(error.value), "a ServerSettings error")


def test_a_401_body_names_no_key() -> None:
    """In-process too (fast): the body and headers of every refusal, for keys near the real
    ones."""
    with running_app(api_keys=(API_KEY,), admin_keys=(ADMIN_KEY,)) as app:
        for key in (API_KEY + "x", API_KEY[1:], ADMIN_KEY.upper(), f"{API_KEY} {ADMIN_KEY}"):
            response = app.http.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
            assert response.status_code == 401
            assert_no_secret(f"{response.headers}\n{response.text}", "a 401")
        response = app.http.get("/metrics", headers=app.headers(API_KEY))
        assert response.status_code == 403
        assert_no_secret(response.text, "a 403")


def test_the_banner_shows_the_redis_url_redacted(secret_env: None) -> None:
    """In-process (fast): the start-up line of a server with every secret set."""
    args = cli.build_parser().parse_args(["serve"])
    line = banner(args, "tiny")
    assert_no_secret(line, "the banner")
    assert f"+ redis redis://prefixkv:***@127.0.0.1:{DEAD_PORT}/0" in line


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://u:pw@h:1/0", "redis://u:***@h:1/0"),
        ("redis://:pw@h", "redis://:***@h"),
        ("redis://pw@h", "redis://***@h"),  # a user name alone is often a misplaced password
        ("rediss://u:p@ss/w:rd@h:1/0", "rediss://u:***@h:1/0"),  # unescaped '@' and '/'
        ("redis://h:1/0", "redis://h:1/0"),
        ("not a url", "not a url"),
    ],
)
def test_redacted_url(url: str, shown: str) -> None:
    assert redacted_url(url) == shown

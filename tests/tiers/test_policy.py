"""Shared stores fail closed without a key (library and CLI), tier keys and key files, and
the disk tier's files: private modes whatever the umask, no symlink followed."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefixkv import cli
from prefixkv.tiers import files
from prefixkv.tiers.build import build_tiered
from prefixkv.tiers.disk import DiskTier
from prefixkv.tiers.key import TierKey, TierKeyError, write_key_file
from prefixkv.tiers.policy import TierPolicyError
from prefixkv.tiers.record import encode
from prefixkv.tiers.redis import RedisTier
from prefixkv.tiers.seal import ChecksumSeal
from prefixkv.tiers.tiered import TieredCache
from tests.redis_fixtures import free_port
from tests.tiers.kv import FINGERPRINT, hot_cache, kv_of

KEY_TEXT = "0f" * 32
NAME = bytes(range(16))


def unreachable() -> str:
    return f"redis://127.0.0.1:{free_port()}/0"


def a_record(name: bytes = NAME) -> bytes:
    return encode(ChecksumSeal(), 0, bytes(16), name, bytes(16), bytes(16), b"kv" * 100)


def modes(root: Path) -> set[tuple[str, int]]:
    """(kind, permission bits) of everything under ``root``, ``root`` included."""
    found = {("dir", stat.S_IMODE(root.stat().st_mode))}
    for path in root.rglob("*"):
        kind = "dir" if path.is_dir() else "file"
        found.add((kind, stat.S_IMODE(path.lstat().st_mode)))
    return found


@pytest.fixture
def no_umask() -> Iterator[None]:
    """Files and directories as open as a umask allows: the tier's modes must not depend on it."""
    old = os.umask(0)
    yield
    os.umask(old)


# --- the policy, for library users --------------------------------------------------------


def test_redis_without_a_key_is_refused_naming_the_fix() -> None:
    tier = RedisTier(unreachable())
    with pytest.raises(TierPolicyError) as raised:
        TieredCache(hot_cache(4), [tier], FINGERPRINT)
    message = str(raised.value)
    assert "shared by every client" in message and "forged" in message
    for fix in ("--tier-key-file", "PREFIXKV_TIER_KEY", "--tier-insecure", "insecure=True"):
        assert fix in message
    TieredCache(hot_cache(4), [tier], FINGERPRINT, key=TierKey.generate()).shutdown()
    TieredCache(hot_cache(4), [RedisTier(unreachable())], FINGERPRINT, insecure=True).shutdown()


def test_build_tiered_refuses_redis_without_a_key() -> None:
    with pytest.raises(TierPolicyError, match="--tier-insecure"):
        build_tiered(hot_cache(4), FINGERPRINT, redis_url=unreachable())
    build_tiered(hot_cache(4), FINGERPRINT, redis_url=unreachable(), insecure=True).shutdown()


def test_a_private_directory_needs_no_key(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path / "kv", 1 << 20)
    assert tier.sharing() is None
    TieredCache(hot_cache(4), [tier], FINGERPRINT).shutdown()


def shared_by_mode(tmp_path: Path) -> Path:
    """A directory others can write (and not sticky): the tier's directory is inside."""
    (tmp_path / "team").mkdir()
    os.chmod(tmp_path / "team", 0o777)
    return tmp_path / "team"


def shared_by_old_mode(tmp_path: Path) -> Path:
    """The tier's directory as an earlier version made it (umask 022: 0755)."""
    (tmp_path / "old" / "prefixkv-v1").mkdir(parents=True)
    os.chmod(tmp_path / "old" / "prefixkv-v1", 0o755)
    return tmp_path / "old"


def shared_by_owner(tmp_path: Path) -> Path:
    """The tier's directory owned by another user (the tests run as root: chown works)."""
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    (tmp_path / "theirs" / "prefixkv-v1").mkdir(parents=True, mode=0o700)
    os.chown(tmp_path / "theirs" / "prefixkv-v1", 65534, 65534)
    return tmp_path / "theirs"


@pytest.mark.parametrize("make", [shared_by_mode, shared_by_old_mode, shared_by_owner])
def test_a_shared_directory_without_a_key_is_refused(tmp_path: Path, make: object) -> None:
    directory = make(tmp_path)  # type: ignore[operator]
    with pytest.raises(TierPolicyError, match="disk tier directory"):
        build_tiered(hot_cache(4), FINGERPRINT, disk_dir=directory)
    cache = build_tiered(hot_cache(4), FINGERPRINT, disk_dir=directory, key=TierKey.generate())
    cache.shutdown()


def test_a_sticky_world_writable_parent_is_private(tmp_path: Path) -> None:
    os.chmod(tmp_path, 0o1777)  # like /tmp: only an entry's owner may rename or remove it
    assert DiskTier(tmp_path / "kv", 1 << 20).sharing() is None


# --- the disk tier's files ------------------------------------------------------------------


def test_directories_0700_files_0600_whatever_the_umask(tmp_path: Path, no_umask: None) -> None:
    cache = TieredCache(hot_cache(4), [DiskTier(tmp_path / "a" / "b", 1 << 20)], FINGERPRINT)
    tokens = list(range(100, 112))
    cache.hot.store(tokens, kv_of(tokens))
    assert cache.flush(10)
    assert modes(tmp_path / "a") == {("dir", 0o700), ("file", 0o600)}
    cache.shutdown()


def test_a_symlink_at_a_records_path_is_not_followed(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, 1 << 20)
    tier.put_many([(NAME, a_record())])
    path = next(tmp_path.rglob("*.kv"))
    elsewhere = tmp_path / "elsewhere.kv"
    elsewhere.write_bytes(a_record())  # a valid record: served if the link were followed
    path.unlink()
    path.symlink_to(elsewhere)
    assert tier.get_many([NAME]) == [None]
    assert not path.is_symlink() and elsewhere.exists()  # the link removed, not its target
    path.symlink_to(elsewhere)  # planted before a start: removed as corrupt, not indexed
    again = DiskTier(tmp_path, 1 << 20)
    assert again.counters().corrupt_blocks == 1 and again.get_many([NAME]) == [None]


def test_a_symlink_planted_at_a_temporary_is_not_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tier = DiskTier(tmp_path, 1 << 20)
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    monkeypatch.setattr("secrets.token_hex", lambda n: "guessed")  # as if predictable
    (tmp_path / "prefixkv-v1" / "tmp" / f"{os.getpid()}-guessed").symlink_to(victim)
    tier.put_many([(NAME, a_record())])
    assert victim.read_bytes() == b"precious"
    assert tier.counters().errors == 1 and tier.counters().writes == 0


def test_temporaries_have_unpredictable_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names: list[str] = []
    write = files.write_new
    monkeypatch.setattr(
        files, "write_new", lambda n, fd, data: (names.append(n), write(n, fd, data))
    )
    tier = DiskTier(tmp_path, 1 << 20)
    tier.put_many([(bytes([i]) * 16, a_record(bytes([i]) * 16)) for i in range(3)])
    assert len(set(names)) == 3
    assert all(len(n.split("-", 1)[1]) >= 24 for n in names)  # >= 96 random bits each


def test_a_symlinked_shard_directory_is_not_followed(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path / "kv", 1 << 20)
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "kv" / "prefixkv-v1" / NAME.hex()[:2]).symlink_to(outside)
    tier.put_many([(NAME, a_record())])
    assert not any(outside.iterdir()) and tier.counters().errors == 1


# --- keys ---------------------------------------------------------------------------------


def test_a_key_file_round_trip_and_its_mode(tmp_path: Path, no_umask: None) -> None:
    path = tmp_path / "tier.key"
    write_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert len(text.strip()) == 64 and text.endswith("\n")
    TierKey.from_file(path)
    with pytest.raises(FileExistsError):
        write_key_file(path)  # never overwritten
    (tmp_path / "link").symlink_to(tmp_path / "target")
    with pytest.raises(FileExistsError):
        write_key_file(tmp_path / "link")  # nor written through a symlink


@pytest.mark.parametrize(
    ("content", "mode", "message"),
    [
        (KEY_TEXT, 0o644, "chmod 600"),
        (KEY_TEXT, 0o640, "chmod 600"),
        (KEY_TEXT, 0o602, "chmod 600"),
        (KEY_TEXT[:-1], 0o600, "64 hex digits"),
        (KEY_TEXT[:-1] + "g", 0o600, "64 hex digits"),
        ("\xff" * 64, 0o600, "not text"),
    ],
)
def test_bad_key_files_are_refused_without_showing_the_key(
    tmp_path: Path, content: str, mode: int, message: str
) -> None:
    path = tmp_path / "tier.key"
    path.write_bytes(content.encode("latin-1"))
    os.chmod(path, mode)
    with pytest.raises(TierKeyError, match=message) as raised:
        TierKey.from_file(path)
    assert str(path) in str(raised.value) and KEY_TEXT[:16] not in str(raised.value)


def test_a_key_file_that_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(TierKeyError, match="not a regular file"):
        TierKey.from_file(tmp_path)
    with pytest.raises(TierKeyError, match="cannot open"):
        TierKey.from_file(tmp_path / "missing")


# --- the CLI: refused before the model loads, exit status 2 ---------------------------------


def serve(tmp_path: Path, *argv: str) -> list[str]:
    """Run ``prefixkv serve`` on a missing model; its exit status must be 2."""
    return ["serve", "--model", str(tmp_path / "no-model-here"), *argv]


@pytest.mark.parametrize(
    "argv",
    [["--redis-url", "redis://127.0.0.1:1/0"], ["--redis-url", "redis://u:hunter2@127.0.0.1:1/0"]],
)
def test_cli_redis_without_a_key_exits_2_before_the_model_loads(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, argv: list[str]
) -> None:
    assert cli.main(serve(tmp_path, *argv)) == 2
    err = capsys.readouterr().err
    assert "shared by every client" in err and "--tier-key-file" in err
    assert "no-model-here" not in err and "hunter2" not in err


def test_cli_shared_disk_without_a_key_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    shared = shared_by_mode(tmp_path)
    assert cli.main(serve(tmp_path, "--disk-cache", str(shared))) == 2
    err = capsys.readouterr().err
    assert "disk tier directory" in err and "--tier-insecure" in err and "no-model-here" not in err


def test_cli_goes_on_to_the_model_with_a_key_or_insecure(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key_file = tmp_path / "tier.key"
    write_key_file(key_file)
    redis = ["--redis-url", "redis://127.0.0.1:1/0"]
    for extra, env in [(["--tier-insecure"], {}), (["--tier-key-file", str(key_file)], {}),
                       ([], {"PREFIXKV_TIER_KEY": KEY_TEXT}), ([], {"PREFIXKV_TIER_INSECURE": "1"})]:  # fmt: skip
        with monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            assert cli.main(serve(tmp_path, *redis, *extra)) == 2
        err = capsys.readouterr().err
        assert "no-model-here" in err and KEY_TEXT not in err  # got as far as the model


@pytest.mark.parametrize(
    ("env", "argv", "message"),
    [
        ({"PREFIXKV_TIER_KEY": "abc"}, [], "PREFIXKV_TIER_KEY: a tier key is 64 hex digits"),
        ({"PREFIXKV_TIER_KEY": KEY_TEXT}, ["--tier-key-file", "k"], "not both"),
        ({"PREFIXKV_TIER_KEY_FILE": "/nonexistent/k"}, [], "cannot open"),
    ],
)
def test_cli_bad_keys_exit_2_without_showing_them(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    argv: list[str],
    message: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert cli.main(serve(tmp_path, "--disk-cache", str(tmp_path / "kv"), *argv)) == 2
    err = capsys.readouterr().err
    assert message in err and "no-model-here" not in err and KEY_TEXT not in err


def test_cli_tier_key_writes_a_private_key_once(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "tier.key"
    assert cli.main(["tier-key", str(path)]) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_text().strip()
    assert key not in capsys.readouterr().out
    assert cli.main(["tier-key", str(path)]) == 2
    assert "never overwritten" in capsys.readouterr().err and path.read_text().strip() == key

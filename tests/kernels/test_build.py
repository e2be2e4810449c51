"""The kernel library's build and load: its identity (sources, flags, compiler, what
-march=native resolves to), the trust checks before loading it (pure over stat results, and
on real files), the private rebuild when they fail, and the build cache."""

from __future__ import annotations

import fnmatch
import logging
import os
import re
import shutil
import stat
from pathlib import Path

import pytest

from prefixkv.index import native
from prefixkv.kernels import build
from prefixkv.kernels.build import NativeUnavailable, Recipe
from prefixkv.kernels.target import clang_target, gcc_target
from prefixkv.kernels.trust import (
    UntrustedLibrary,
    directory_problems,
    file_problems,
    open_library,
)
from tests.kernels.loaded import loaded

ME, OTHER = 1000, 1001


def status(mode: int, uid: int = ME) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, uid, uid, 0, 0, 0, 0))


@pytest.mark.parametrize(
    ("mode", "uid", "problems"),
    [
        (stat.S_IFREG | 0o755, ME, ()),
        (stat.S_IFREG | 0o600, ME, ()),
        (stat.S_IFREG | 0o775, ME, ("is writable by group or others (mode 0775)",)),
        (stat.S_IFREG | 0o646, ME, ("is writable by group or others (mode 0646)",)),
        (stat.S_IFREG | 0o755, OTHER, ("is owned by uid 1001, not by this process's 1000",)),
        (stat.S_IFLNK | 0o777, ME, ("is a symbolic link",)),
        (stat.S_IFDIR | 0o755, ME, ("is not a regular file",)),
        (stat.S_IFIFO | 0o622, OTHER, ("is not a regular file", "is owned by uid 1001, not "
         "by this process's 1000", "is writable by group or others (mode 0622)")),
    ],
)  # fmt: skip
def test_file_problems(mode: int, uid: int, problems: tuple[str, ...]) -> None:
    assert file_problems(status(mode, uid), ME) == problems


@pytest.mark.parametrize(
    ("mode", "uid", "problems"),
    [
        (stat.S_IFDIR | 0o755, ME, ()),
        (stat.S_IFDIR | 0o700, ME, ()),
        (stat.S_IFDIR | 0o1777, ME, ("is writable by group or others (mode 1777)",)),
        (stat.S_IFDIR | 0o770, ME, ("is writable by group or others (mode 0770)",)),
        (stat.S_IFDIR | 0o700, OTHER, ("is owned by uid 1001, not by this process's 1000",)),
        (stat.S_IFLNK | 0o777, ME, ("is a symbolic link",)),
        (stat.S_IFREG | 0o755, ME, ("is not a directory",)),
    ],
)
def test_directory_problems(mode: int, uid: int, problems: tuple[str, ...]) -> None:
    assert directory_problems(status(mode, uid), ME) == problems


@pytest.fixture
def library_copy(tmp_path: Path) -> Path:
    """A copy of this process's kernel library, alone in a directory of mode 0700."""
    loaded()
    built = Path(_cached_library())
    folder = tmp_path / "native"
    folder.mkdir(mode=0o700)
    copy = folder / built.name
    shutil.copyfile(built, copy)
    copy.chmod(0o755)
    return copy


def _cached_library() -> str:
    """The library this process loaded from the default cache directory."""
    from prefixkv.engine.loader import default_cache_dir

    return str(default_cache_dir() / "native" / build.recipe().library_name())


def test_a_library_that_passes_the_checks_loads(library_copy: Path) -> None:
    assert int(open_library(library_copy).prefixkv_lanes()) == 16


@pytest.mark.parametrize("what", ["group-writable", "world-writable", "directory"])
def test_a_library_others_could_write_is_not_loaded(library_copy: Path, what: str) -> None:
    if what == "directory":
        library_copy.parent.chmod(0o777)
    else:
        library_copy.chmod(0o775 if what == "group-writable" else 0o757)
    with pytest.raises(UntrustedLibrary, match="writable by group or others"):
        open_library(library_copy)


def test_a_symlinked_library_is_not_loaded(library_copy: Path) -> None:
    link = library_copy.with_name("kernels-link.so")
    link.symlink_to(library_copy)
    with pytest.raises(UntrustedLibrary, match=r"kernels-link\.so is a symbolic link"):
        open_library(link)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file away needs root (CI runs as root)")
@pytest.mark.parametrize("what", ["file", "directory"])
def test_a_library_owned_by_another_user_is_not_loaded(library_copy: Path, what: str) -> None:
    os.chown(library_copy if what == "file" else library_copy.parent, OTHER, OTHER)
    with pytest.raises(UntrustedLibrary, match="is owned by uid 1001, not by this process's 0"):
        open_library(library_copy)


@pytest.mark.process  # builds the library
def test_an_untrusted_cache_is_replaced_by_a_private_build(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The library in the cache is made group-writable: the next load neither loads it nor
    writes there, but builds its own copy in a private directory, with one warning."""
    load = build.load.__wrapped__  # past the per-process cache
    load(tmp_path)
    (cached,) = (tmp_path / "native").glob("kernels-*.so")
    cached.chmod(0o775)
    before = cached.read_bytes()
    with caplog.at_level(logging.WARNING, logger="prefixkv.kernels"):
        library = load(tmp_path)
    assert int(library.prefixkv_lanes()) == 16
    (warning,) = caplog.messages
    assert "is writable by group or others (mode 0775)); built a private copy (" in warning
    assert "\n" not in warning
    assert cached.read_bytes() == before and list((tmp_path / "native").iterdir()) == [cached]


def test_the_identity_names_sources_flags_compiler_and_target() -> None:
    made = Recipe("/usr/bin/cc", "cc (Debian 12.2.0) 12.2.0\nCopyright", build.FLAGS, "arch=a")
    line = made.identity()
    assert line.startswith("sources=") and "flags=-O3 -march=native" in line
    assert "cc=cc (Debian 12.2.0) 12.2.0 target=" in line and "\n" not in line
    other_cpu = Recipe(made.compiler, made.version, made.flags, "arch=b")
    sanitized = Recipe(made.compiler, made.version, build.FLAGS + build.SANITIZE, "arch=a")
    names = {r.library_name() for r in (made, other_cpu, sanitized)}
    assert len(names) == 3  # another CPU or the sanitizer build: another library
    assert build.identity() == build.recipe().identity()  # this process's, cached


def test_this_machines_target_is_what_the_compiler_resolves() -> None:
    target = build.recipe().target
    if "clang" not in build.recipe().version.lower():
        assert "arch=" in target.splitlines()[0] and "arch=native" not in target
    assert target.splitlines()[1:]  # and the machine and its CPU flags


def test_sanitize_is_asked_for_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(build.SANITIZE_VARIABLE, raising=False)
    monkeypatch.delenv(build.MARCH_VARIABLE, raising=False)
    assert build.flags() == build.FLAGS
    monkeypatch.setenv(build.SANITIZE_VARIABLE, "1")
    assert build.flags() == build.FLAGS + build.SANITIZE
    monkeypatch.setenv(build.SANITIZE_VARIABLE, "yes")
    with pytest.raises(ValueError, match="PREFIXKV_KERNEL_SANITIZE must be 0 or 1, not 'yes'"):
        build.flags()


def test_another_march_is_asked_for_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(build.SANITIZE_VARIABLE, raising=False)
    monkeypatch.setenv(build.MARCH_VARIABLE, "x86-64-v3")
    assert "-march=x86-64-v3" in build.flags() and "-march=native" not in build.flags()
    monkeypatch.setenv(build.MARCH_VARIABLE, "native -O0")
    with pytest.raises(ValueError, match="PREFIXKV_KERNEL_MARCH must name one -march target"):
        build.flags()


def test_a_sanitized_library_needs_its_runtime_preloaded() -> None:
    sanitized = Recipe("/usr/bin/cc", "cc 12", build.FLAGS + build.SANITIZE, "arch=a")
    with pytest.raises(NativeUnavailable, match="LD_PRELOAD="):
        build.check_sanitizer_runtime(sanitized, "")
    build.check_sanitizer_runtime(sanitized, "/usr/lib/libasan.so.8 /usr/lib/libubsan.so.1")
    build.check_sanitizer_runtime(Recipe("/usr/bin/cc", "cc 12", build.FLAGS, "arch=a"), "")


GCC_LISTING = """The following options are target specific:
  -m128bit-long-double        		[enabled]
  -m16                        		[disabled]
  -mabi=                      		sysv
  -march=                     		znver3
  -mavx2                      		[enabled]
  -mavx512f                   		[disabled]
  -mcmodel=                   		
  -mfma                       		[enabled]

  Known valid arguments for -march= option:
    i386 i486 i586 pentium native
"""  # noqa: W291


def test_gcc_target_lists_what_is_enabled_or_set() -> None:
    assert gcc_target(GCC_LISTING) == "+128bit-long-double abi=sysv arch=znver3 +avx2 +fma"
    assert gcc_target("cc: error: unrecognized command-line option") == ""


CLANG_COMMANDS = """clang version 16.0.6
Target: x86_64-pc-linux-gnu
 "/usr/lib/llvm-16/bin/clang" "-cc1" "-triple" "x86_64-pc-linux-gnu" "-emit-obj" \
"-target-cpu" "znver3" "-target-feature" "+avx2" "-target-feature" "-avx512f" \
"-tune-cpu" "znver3" "-o" "/dev/null" "-x" "c" "/dev/null"
"""


def test_clang_target_lists_cpu_and_features() -> None:
    assert clang_target(CLANG_COMMANDS) == (
        "-target-cpu=znver3 -target-feature=+avx2 -target-feature=-avx512f -tune-cpu=znver3"
    )
    assert clang_target("clang: error: the clang compiler does not support '-march=native'") == ""


def test_a_missing_compiler_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(NativeUnavailable, match="no-such-cc"):
        build.load(tmp_path)


@pytest.mark.process
def test_the_library_is_built_once_per_cache_dir_and_reused(tmp_path: Path) -> None:
    build_or_load = build.load.__wrapped__  # past the per-process cache
    library = build_or_load(tmp_path)
    (built,) = (tmp_path / "native").glob("kernels-*.so")
    assert int(library.prefixkv_lanes()) == 16
    assert stat.S_IMODE((tmp_path / "native").stat().st_mode) == 0o700
    assert stat.S_IMODE(built.stat().st_mode) == 0o755
    stamp = built.stat().st_mtime_ns
    build_or_load(tmp_path)
    assert built.stat().st_mtime_ns == stamp and len(os.listdir(tmp_path / "native")) == 1


@pytest.mark.process  # asks the compiler its version
def test_an_unwritable_cache_dir_is_named(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    with pytest.raises(NativeUnavailable, match="cannot build into"):
        build.load.__wrapped__(blocked)


def test_the_package_carries_every_kernel_source() -> None:
    """Every file of csrc is compiled or included (so part of the identity) and matched by
    pyproject's package-data, so a wheel or sdist can build the library; the same for the
    prefix index's native descent."""
    csrc = {path.name for path in build.SOURCE_DIR.iterdir()}
    assert csrc == {path.name for path in build.SOURCES + build.HEADERS}
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    data = pyproject.split("[tool.setuptools.package-data]")[1]
    found = re.search(r"^prefixkv = \[(.*?)\]", data, re.MULTILINE)
    assert found is not None
    patterns = [p.strip().strip('"') for p in found[1].split(",")]
    for name in csrc:
        assert any(fnmatch.fnmatch(f"kernels/csrc/{name}", p) for p in patterns), name
    descent = {path.name for path in native.SOURCE.parent.iterdir()}  # the index's own C
    assert descent == {native.SOURCE.name}
    assert any(fnmatch.fnmatch(f"index/csrc/{native.SOURCE.name}", p) for p in patterns)

"""Builds and loads prefixkv's native kernels on first use: the attention kernel
(``batch/native_attention.c``), the linear layers (``native_linear.c``) and the vector work
between them (``native_layers.c``), one library.

The C files are compiled once per machine with the system's C compiler (``$CC``, else ``cc``
or ``gcc``) into ``<cache dir>/native/``, under a name hashed from the source, the flags, the
compiler's version and the CPU (``-march=native`` code must not run on another CPU), so a
changed source or a moved home directory never loads a stale or foreign library. It takes
about a second. The library is written to a temporary file and renamed into place, so
processes building at once each get a whole library.

OpenMP: the library links ``libgomp.so.1``, the runtime PyTorch's Linux wheels load under
that name, so its parallel loop shares PyTorch's thread pool instead of starting a second one.
A compiler without OpenMP gets a single-threaded build.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

from prefixkv.engine.loader import default_cache_dir

SOURCES = (
    Path(__file__).parent / "batch" / "native_attention.c",
    Path(__file__).with_name("native_linear.c"),
    Path(__file__).with_name("native_layers.c"),
)
HEADERS = (Path(__file__).with_name("native_vector.h"),)
"""Included by the sources: part of the library's name, like them."""
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC")
"""No ``-ffast-math``: linking with it sets flush-to-zero for the whole process, which would
change PyTorch's own results."""
OPENMP = ("-fopenmp",)


class NativeUnavailable(RuntimeError):
    """The native kernels cannot be built or loaded here; the message says why."""


def compiler() -> str:
    """The C compiler to use; NativeUnavailable when there is none."""
    named = os.environ.get("CC")
    if named:
        found = shutil.which(named)
        if not found:
            raise NativeUnavailable(f"CC={named!r} is not a command")
        return found
    found = shutil.which("cc") or shutil.which("gcc")
    if not found:
        raise NativeUnavailable("no C compiler found (install gcc, or set CC)")
    return found


def _cpu_identity() -> str:
    """The machine and, on Linux, the CPU's model and feature flags."""
    text = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("model name", "flags", "Features")):
                    text += line
                if line.strip() == "":
                    break  # the first CPU says it for all
    except OSError:
        pass
    return text


def _version(cc: str) -> str:
    try:
        run = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeUnavailable(f"C compiler {cc!r} does not run ({exc})") from exc
    return run.stdout


def library_path(cache_dir: Path, cc: str) -> Path:
    """Where the library built by ``cc`` from today's source lives under ``cache_dir``."""
    digest = hashlib.sha256()
    for source in SOURCES + HEADERS:
        digest.update(source.read_bytes())
    for part in (" ".join(FLAGS + OPENMP).encode(), _version(cc).encode()):
        digest.update(part)
    digest.update(_cpu_identity().encode())
    return cache_dir / "native" / f"kernels-{digest.hexdigest()[:20]}.so"


def build(target: Path, cc: str) -> None:
    """Compile SOURCES into ``target`` (with OpenMP if the compiler has it); raises
    NativeUnavailable with the compiler's last words when neither build works."""
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for extra in (OPENMP, ()):
        with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
            partial = Path(tmp.name)
        command = [cc, *FLAGS, *extra, *map(str, SOURCES), "-o", str(partial)]
        try:
            run = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            run = None
            errors.append(str(exc))
        if run is not None and run.returncode == 0:
            os.replace(partial, target)
            return
        partial.unlink(missing_ok=True)
        if run is not None:
            errors.append(run.stderr.strip()[-500:])
    names = ", ".join(source.name for source in SOURCES)
    raise NativeUnavailable(f"building {names} with {cc} failed: {errors[-1]}")


@functools.lru_cache(maxsize=4)
def load(cache_dir: Path | None = None) -> ctypes.CDLL:
    """The native library, built first if needed (once per process and cache directory).
    Raises NativeUnavailable when it cannot be built or loaded."""
    cc = compiler()
    path = library_path(default_cache_dir() if cache_dir is None else cache_dir, cc)
    if not path.exists():
        try:
            build(path, cc)
        except OSError as exc:  # an unwritable cache directory, a full disk
            raise NativeUnavailable(f"cannot build into {path.parent} ({exc})") from exc
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise NativeUnavailable(f"cannot load {path} ({exc})") from exc
    _declare(lib)
    return lib


def _declare(lib: ctypes.CDLL) -> None:
    i64, i32, f32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    lib.prefixkv_lanes.argtypes, lib.prefixkv_lanes.restype = [], i32
    lib.prefixkv_attend.restype = i32
    lib.prefixkv_attend.argtypes = [
        ptr, i64, i64,  # query, head stride, row stride
        ptr, ptr, i64,  # keys, values, kv head stride
        ptr, i32, i32, i32, f32,  # out, heads, kv heads, dim, scale
        i32, ptr, ptr, ptr, ptr, ptr, ptr, i64,  # items, member_start, rows, sees, token_start, slot, owner, max
        i32,  # threads
    ]  # fmt: skip
    lib.prefixkv_store.restype = None
    lib.prefixkv_store.argtypes = [
        ptr, ptr, i64,  # keys, values, kv head stride
        ptr, i64, i64, ptr, i64, i64,  # new keys and new values, each with head and row strides
        i32, i32, i64, ptr,  # kv heads, dim, tokens, slots
    ]  # fmt: skip
    lib.prefixkv_linear_block.argtypes, lib.prefixkv_linear_block.restype = [], i32
    lib.prefixkv_rms_norm.restype = lib.prefixkv_silu_mul.restype = None
    lib.prefixkv_rms_norm.argtypes = [
        ptr, i64, i64, i64, ptr, f32, ptr,  # x, rows, dim, x row stride, weight, eps, out
    ]  # fmt: skip
    lib.prefixkv_silu_mul.argtypes = [
        ptr, i64, i64, i64, ptr, i32,  # gate_up, rows, width, row stride, out, threads
    ]  # fmt: skip
    lib.prefixkv_linear.restype = None
    lib.prefixkv_linear.argtypes = [
        ptr, i64, i64, ptr, ptr, i64, ptr, i32,  # x, rows, in, packed, bias, out features, out, threads
    ]  # fmt: skip

"""Builds and loads prefixkv's native kernels on first use: attention (``csrc/attention.c``),
the linear layers (``csrc/linear.c``), the vector work between them (``csrc/layers.c``) and
the decoder pass that runs them all for a step (``csrc/decoder.c``), one library. Only :mod:`prefixkv.kernels.ops` calls into it.

The sources are compiled once per machine with the system's C compiler (``$CC``, else ``cc``
or ``gcc``) into ``<cache dir>/native/``, under a name hashed from :func:`identity`: the
sources, the flags, the compiler's version and what ``-march=native`` means on this CPU as
the compiler resolves it (``-march=native`` code must not run on another CPU, where it could
die of an illegal instruction), so a changed source or a moved home directory never loads a
stale or foreign library. It takes a few seconds. The library is written to a temporary file
and renamed into place, so processes building at once each get a whole library; it is
loaded only if no one else could have written it (:mod:`prefixkv.kernels.trust`), else built
again in a private directory.

``PREFIXKV_KERNEL_SANITIZE=1`` builds with AddressSanitizer and UndefinedBehaviorSanitizer
(another library name); the process must have their runtimes preloaded (``make
test-kernels-asan``).

OpenMP: the library links ``libgomp.so.1``, the runtime PyTorch's Linux wheels load under
that name, so its parallel loop shares PyTorch's thread pool instead of starting a second one.
A compiler without OpenMP gets a single-threaded build.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from prefixkv.engine.loader import default_cache_dir
from prefixkv.kernels.target import target_features
from prefixkv.kernels.trust import UntrustedLibrary, folder_problems, open_library

log = logging.getLogger("prefixkv.kernels")
T = TypeVar("T")

SOURCE_DIR = Path(__file__).with_name("csrc")
SOURCES = tuple(SOURCE_DIR / name for name in ("attention.c", "linear.c", "layers.c", "decoder.c"))
HEADERS = tuple(
    SOURCE_DIR / name
    for name in (
        "abi.h",
        "kernels.h",
        "vector.h",
        "linear_widen.h",
        "linear_legacy.h",
        "linear_kquants.h",
        "linear_int8.h",
        "linear_int8_k.h",
    )
)
"""Included by the sources: part of the library's identity, like them."""
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-shared", "-fPIC")
"""No ``-ffast-math``: linking with it sets flush-to-zero for the whole process, which would
change PyTorch's own results."""
OPENMP = ("-fopenmp",)
SANITIZE_VARIABLE = "PREFIXKV_KERNEL_SANITIZE"
MARCH_VARIABLE = "PREFIXKV_KERNEL_MARCH"
"""Another ``-march`` than native (e.g. ``x86-64-v3``: AVX2 and FMA without AVX-512), so that
the paths a CPU without this one's features takes are tested here too."""
SANITIZE = (
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
    "-g",
)


class NativeUnavailable(RuntimeError):
    """The native kernels cannot be built or loaded here; the message says why."""


@dataclass(frozen=True)
class Product:
    """One library :func:`build` compiles: the kernels (:data:`KERNELS`), or another built
    the same way (the prefix index's descent, :mod:`prefixkv.index.native`)."""

    stem: str  # its file name's start
    sources: tuple[Path, ...]  # compiled
    headers: tuple[Path, ...]  # included by them: part of its identity too
    extra: tuple[str, ...]  # more flags (include directories, defines): part of its identity
    runtimes: tuple[tuple[str, ...], ...]  # flags tried in turn until a build works


KERNELS = Product("kernels", SOURCES, HEADERS, (), (OPENMP, ()))


@dataclass(frozen=True)
class Recipe:
    """How the library is built here: the compiler, its flags, and what it targets."""

    compiler: str  # the compiler's path
    version: str  # its ``--version`` output
    flags: tuple[str, ...]  # OPENMP is added when the compiler has it
    target: str  # what -march=native resolves to, and the CPU's own feature flags

    def identity(self, product: Product = KERNELS) -> str:
        """One line naming everything ``product``'s machine code depends on: the sources'
        digest, the flags, the compiler's version and digests of its full version text and
        of the resolved target."""
        sources = hashlib.sha256()
        for source in product.sources + product.headers:
            sources.update(source.name.encode() + b"\0" + source.read_bytes())
        first_line = self.version.strip().splitlines()[0] if self.version.strip() else "?"
        target = hashlib.sha256(f"{self.version}\0{self.target}".encode()).hexdigest()
        return (
            f"sources={sources.hexdigest()[:16]} "
            f"flags={' '.join(self.flags + product.runtimes[0] + product.extra)} "
            f"cc={first_line} target={target[:16]}"
        )

    def library_name(self, product: Product = KERNELS) -> str:
        digest = hashlib.sha256(self.identity(product).encode()).hexdigest()[:20]
        return f"{product.stem}-{digest}.so"


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


def flags() -> tuple[str, ...]:
    """FLAGS (``-march`` from ``PREFIXKV_KERNEL_MARCH`` when set), and SANITIZE when
    ``PREFIXKV_KERNEL_SANITIZE=1``; ValueError for another value than 0, 1 or unset, or a
    march name that is not one word of letters, digits, ``-``, ``_`` and ``.``."""
    asked = os.environ.get(SANITIZE_VARIABLE, "0")
    if asked not in ("0", "1"):
        raise ValueError(f"{SANITIZE_VARIABLE} must be 0 or 1, not {asked!r}")
    march = os.environ.get(MARCH_VARIABLE, "native")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", march):
        raise ValueError(f"{MARCH_VARIABLE} must name one -march target, not {march!r}")
    chosen = tuple(f"-march={march}" if f == "-march=native" else f for f in FLAGS)
    return chosen + SANITIZE if asked == "1" else chosen


def recipe() -> Recipe:
    """This process's recipe (from ``$CC`` and ``$PREFIXKV_KERNEL_SANITIZE``); asks the
    compiler once per process. Raises NativeUnavailable without a working compiler."""
    return _recipe(compiler(), flags())


@functools.lru_cache(maxsize=8)
def _recipe(cc: str, chosen: tuple[str, ...]) -> Recipe:
    try:
        run = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise NativeUnavailable(f"C compiler {cc!r} does not run ({exc})") from exc
    try:
        target = target_features(cc, run.stdout)
    except RuntimeError as exc:
        raise NativeUnavailable(str(exc)) from exc
    return Recipe(cc, run.stdout, chosen, target)


def identity() -> str:
    """What the native library loaded by this process is: :meth:`Recipe.identity` (sources,
    flags, compiler, resolved CPU target). For a model fingerprint: the kernels' rounding
    may differ wherever it differs. Raises NativeUnavailable without a working compiler."""
    return recipe().identity()


def build(target: Path, plan: Recipe, product: Product = KERNELS) -> None:
    """Compile ``product``'s sources into ``target`` (the kernels with OpenMP if the compiler
    has it), mode 0755; raises NativeUnavailable with the compiler's last words when no
    build works, OSError when ``target``'s directory cannot be written."""
    errors = []
    for extra in product.runtimes:
        with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
            partial = Path(tmp.name)
        sources = map(str, product.sources)
        command = [plan.compiler, *plan.flags, *product.extra, *extra, *sources, "-o", str(partial)]
        try:
            run = subprocess.run(command, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            run = None
            errors.append(str(exc))
        if run is not None and run.returncode == 0:
            os.chmod(partial, 0o755)  # the linker's mode follows the umask (0775 under 002)
            os.replace(partial, target)
            return
        partial.unlink(missing_ok=True)
        if run is not None:
            errors.append(run.stderr.strip()[-500:])
    names = ", ".join(source.name for source in product.sources)
    raise NativeUnavailable(f"building {names} with {plan.compiler} failed: {errors[-1]}")


@functools.lru_cache(maxsize=4)
def load(cache_dir: Path | None = None) -> ctypes.CDLL:
    """The native kernel library (:func:`load_product` of :data:`KERNELS`), once per process
    and cache directory. Declares nothing: :mod:`prefixkv.kernels.ops` does."""
    return load_product(KERNELS, open_library, cache_dir)


def load_product(product: Product, opener: Callable[[Path], T], cache_dir: Path | None) -> T:
    """``product`` opened by ``opener``, built first if needed, from ``<cache_dir>/native/``
    (default :func:`prefixkv.engine.loader.default_cache_dir`) where :mod:`.trust` finds
    nothing wrong, else built in a private directory and opened from there (logged as one
    warning). Raises NativeUnavailable when it cannot be built or loaded. ``opener`` applies
    :mod:`.trust`'s checks (``open_library``, ``open_extension``)."""
    plan = recipe()
    check_sanitizer_runtime(plan, os.environ.get("LD_PRELOAD", ""))
    home = (default_cache_dir() if cache_dir is None else cache_dir) / "native"
    path = home / plan.library_name(product)
    try:
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
        problems = folder_problems(home)
        if not problems and not os.path.lexists(path):
            build(path, plan, product)
    except OSError as exc:  # an unwritable cache directory, a full disk
        raise NativeUnavailable(f"cannot build into {home} ({exc})") from exc
    if not problems:
        try:
            return opener(path)
        except UntrustedLibrary as exc:
            problems = (str(exc),)
        except OSError as exc:
            raise NativeUnavailable(f"cannot load {path} ({exc})") from exc
    log.warning(
        "native %s: not loading %s (%s); built a private copy (make the cache directory "
        "yours and not writable by others, or set PREFIXKV_CACHE_DIR)",
        product.stem,
        path,
        "; ".join(problems),
    )
    return _load_private(plan, product, opener)


def _load_private(plan: Recipe, product: Product, opener: Callable[[Path], T]) -> T:
    """``product`` built afresh in a new directory only this user can enter (mode 0700),
    removed once loaded (the loaded library stays mapped)."""
    private = Path(tempfile.mkdtemp(prefix=f"prefixkv-{product.stem}-"))
    try:
        path = private / plan.library_name(product)
        build(path, plan, product)
        return opener(path)
    except (OSError, UntrustedLibrary) as exc:
        raise NativeUnavailable(f"cannot build a private copy in {private} ({exc})") from exc
    finally:
        shutil.rmtree(private, ignore_errors=True)


def check_sanitizer_runtime(plan: Recipe, preload: str) -> None:
    """NativeUnavailable, saying how to run it, when ``plan`` builds with the sanitizers and
    ``preload`` (``$LD_PRELOAD``) does not load AddressSanitizer's runtime: the library
    would abort the process as it loads."""
    if SANITIZE[0] in plan.flags and "libasan" not in preload:
        raise NativeUnavailable(
            f"{SANITIZE_VARIABLE}=1 builds kernels that need the sanitizer runtimes loaded "
            'first: LD_PRELOAD="$(cc -print-file-name=libasan.so) $(cc '
            '-print-file-name=libubsan.so)" (see make test-kernels-asan)'
        )

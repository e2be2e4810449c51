"""Whether a compiled kernel library may be loaded, and loading it only if so.

Loading a shared library runs its code as this process. The kernel library's name is
computable from public inputs (a hash of the sources, flags, compiler and CPU), so a cache
directory that another user can write to (``PREFIXKV_CACHE_DIR`` or ``XDG_CACHE_HOME`` on a
shared directory) would let them put their code under that name. A library is therefore
loaded only if it is a regular file, not a symbolic link, owned by the effective user and
not writable by group or others, in a directory with the same properties (so that no one
else can replace it either). The checks are pure functions over ``lstat`` results;
:func:`open_checked` applies them (:func:`open_library` for a shared library,
:func:`open_extension` for a CPython extension module).
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import importlib.util
import os
import stat
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Protocol, TypeVar

T = TypeVar("T")

_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
_FD_DIR = Path("/proc/self/fd")


class StatResult(Protocol):
    """The parts of an ``os.stat_result`` the checks read."""

    @property
    def st_mode(self) -> int: ...

    @property
    def st_uid(self) -> int: ...


class UntrustedLibrary(RuntimeError):
    """A library or its directory failed the checks; the message names every problem."""


def file_problems(status: StatResult, euid: int) -> tuple[str, ...]:
    """Why a library file whose ``lstat`` is ``status`` must not be loaded by effective user
    ``euid``: an empty tuple when it may be. Pure."""
    if stat.S_ISLNK(status.st_mode):
        return ("is a symbolic link",)
    kind = () if stat.S_ISREG(status.st_mode) else ("is not a regular file",)
    return (*kind, *_owner_problems(status, euid))


def directory_problems(status: StatResult, euid: int) -> tuple[str, ...]:
    """Why a directory whose ``lstat`` is ``status`` must not hold a library that effective
    user ``euid`` loads: an empty tuple when it may. Pure."""
    if stat.S_ISLNK(status.st_mode):
        return ("is a symbolic link",)
    kind = () if stat.S_ISDIR(status.st_mode) else ("is not a directory",)
    return (*kind, *_owner_problems(status, euid))


def _owner_problems(status: StatResult, euid: int) -> tuple[str, ...]:
    problems = []
    if status.st_uid != euid:
        problems.append(f"is owned by uid {status.st_uid}, not by this process's {euid}")
    if status.st_mode & _OTHERS_WRITE:
        mode = stat.S_IMODE(status.st_mode)
        problems.append(f"is writable by group or others (mode {mode:04o})")
    return tuple(problems)


def folder_problems(folder: Path) -> tuple[str, ...]:
    """What :func:`directory_problems` finds for ``folder``, each prefixed with its path.
    Raises OSError when it cannot be ``lstat``-ed."""
    return tuple(f"{folder} {p}" for p in directory_problems(os.lstat(folder), os.geteuid()))


def path_problems(path: Path) -> tuple[str, ...]:
    """What :func:`file_problems` and :func:`directory_problems` find for the library at
    ``path`` and its directory, each prefixed with the path it is about. Raises OSError when
    either cannot be ``lstat``-ed."""
    found = file_problems(os.lstat(path), os.geteuid())
    return (*folder_problems(path.parent), *(f"{path} {p}" for p in found))


def open_library(path: Path) -> ctypes.CDLL:
    """The shared library at ``path``, loaded by :func:`open_checked`."""
    return open_checked(path, ctypes.CDLL)


def open_extension(path: Path, name: str) -> ModuleType:
    """The CPython extension module ``name`` (its ``PyInit_<name>``) at ``path``, loaded by
    :func:`open_checked`; not entered in ``sys.modules``."""

    def load(location: str) -> ModuleType:
        loader = importlib.machinery.ExtensionFileLoader(name, location)
        spec = importlib.util.spec_from_file_location(name, location, loader=loader)
        assert spec is not None  # (given a loader, there is always a spec)
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
        return module

    return open_checked(path, load)


def open_checked(path: Path, opener: Callable[[str], T]) -> T:
    """``opener`` called with the name of the library at ``path`` after
    :func:`path_problems` finds nothing.

    Raises UntrustedLibrary naming the problems (nothing is loaded), OSError when the file
    cannot be opened or loaded. Where ``/proc/self/fd`` exists the library is loaded through
    the descriptor that was checked, so a path swapped between the check and the load (an
    ancestor directory writable by others) changes nothing; that descriptor stays open for
    the life of the process, because the dynamic loader remembers a library by the name it
    was loaded under and must never meet that name again for another file."""
    problems = path_problems(path)
    if problems:
        raise UntrustedLibrary("; ".join(problems))
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        opened = os.fstat(fd)
        checked = os.lstat(path)
        if (opened.st_dev, opened.st_ino) != (checked.st_dev, checked.st_ino):
            raise UntrustedLibrary(f"{path} changed while it was being checked")
        problems = tuple(f"{path} {p}" for p in file_problems(opened, os.geteuid()))
        if problems:
            raise UntrustedLibrary("; ".join(problems))
        by_fd = _FD_DIR / str(fd)
        library = opener(str(by_fd) if by_fd.exists() else str(path))
    except BaseException:
        os.close(fd)
        raise
    if not _FD_DIR.is_dir():
        os.close(fd)  # loaded by path: the descriptor is not its name
    return library

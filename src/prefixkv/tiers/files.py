"""The disk tier's file operations: private modes whatever the umask, no symlink followed.

Every operation below the tier's directory goes through directory descriptors opened with
``O_NOFOLLOW`` (``openat`` and friends), so a symlink planted anywhere under it (a shard
directory, a record, a temporary) is never followed, and a directory swapped after start is
not the one used. Directories are created 0700 and files 0600, set with ``fchmod`` after
creation (a umask only ever removes bits; an explicit mode is independent of it).

*Private* (:func:`why_shared`): the tier's directory is owned by the effective user and has
no permission bit for group or others, and no directory above it (symlinks resolved) lets
anyone but this user or root replace it: each is owned by this user or root and is not
writable by group or others unless sticky (like ``/tmp``, where only an entry's owner may
rename or remove it). Anything else is *shared*: others can write records there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC  # no FIFO stalls
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class NotARegularFile(OSError):
    """A name held something else than a regular file (a symlink, a FIFO, a directory)."""


def make_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents, each 0700 (parents that exist are left
    as they are)."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue  # another process made it meanwhile
        os.chmod(directory, DIR_MODE)


def open_dir(name: str | Path, dir_fd: int | None = None) -> int:
    """A descriptor of directory ``name`` (relative to ``dir_fd`` if given); OSError
    (ELOOP, ENOTDIR) if its last component is a symlink or not a directory."""
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def open_or_make_dir(name: str, dir_fd: int) -> int:
    """A descriptor of directory ``name`` in ``dir_fd``, created 0700 if missing."""
    try:
        return open_dir(name, dir_fd)
    except FileNotFoundError:
        pass
    try:
        os.mkdir(name, DIR_MODE, dir_fd=dir_fd)
    except FileExistsError:
        return open_dir(name, dir_fd)
    fd = open_dir(name, dir_fd)
    os.fchmod(fd, DIR_MODE)
    return fd


def read_regular(name: str, dir_fd: int, size: int) -> bytearray:
    """Up to ``size + 1`` bytes of regular file ``name`` in ``dir_fd`` (one more than
    ``size`` shows that the file is longer). Raises FileNotFoundError, NotARegularFile
    (a symlink or anything not a regular file there), or OSError."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotARegularFile(errno.ELOOP, "a symlink", name) from None
        raise
    with os.fdopen(fd, "rb", buffering=0) as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotARegularFile(errno.EINVAL, "not a regular file", name)
        data = bytearray(size + 1)
        view, got = memoryview(data), 0
        while got <= size:
            step = file.readinto(view[got:]) or 0
            if not step:
                break
            got += step
        view.release()
    del data[got:]
    return data


def write_new(name: str, dir_fd: int, data: bytes) -> None:
    """Create file ``name`` in ``dir_fd`` (it must not exist, not even as a symlink), mode
    0600, holding ``data``. Removes it again if writing fails, then raises."""
    fd = os.open(name, _CREATE_FLAGS, FILE_MODE, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb", buffering=0) as file:
            os.fchmod(fd, FILE_MODE)
            view = memoryview(data)
            while view:
                view = view[file.write(view) or 0 :]
    except BaseException:
        unlink(name, dir_fd)
        raise


def unlink(name: str, dir_fd: int) -> None:
    """Remove entry ``name`` of ``dir_fd`` (a symlink itself, never its target), if there."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def why_shared(path: Path, fd: int) -> str | None:
    """Why others can write records into the directory ``path`` (opened as ``fd``); None
    when it is private (see the module's docstring)."""
    me = os.geteuid()
    info = os.fstat(fd)
    if info.st_uid != me:
        return f"the disk tier directory {path} is owned by uid {info.st_uid}, not this user"
    if info.st_mode & 0o077:
        mode = stat.S_IMODE(info.st_mode)
        return f"the disk tier directory {path} has mode {mode:04o}: group or others can use it"
    for above in Path(os.path.realpath(path)).parents:
        info = os.stat(above)
        if info.st_uid not in (me, 0):
            return f"{above}, above the disk tier directory {path}, is owned by uid {info.st_uid}"
        if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
            mode = stat.S_IMODE(info.st_mode)
            return (
                f"{above}, above the disk tier directory {path}, has mode {mode:04o}: "
                "group or others can replace what is in it"
            )
    return None


def directory_sharing(path: Path) -> str | None:
    """``why_shared`` of ``path`` (created 0700 with its missing parents if need be); None
    as well if it cannot be created or opened (a tier there would read nothing)."""
    try:
        make_dirs(path)
        fd = open_dir(path)
    except OSError:
        return None
    try:
        return why_shared(path, fd)
    finally:
        os.close(fd)

"""DiskTier: records as files in a directory, surviving restarts, bounded in bytes.

Layout: ``DIR/prefixkv-v1/<2 hex>/<32 hex>.kv``, one record per file, named by its block
name. A file is written under a temporary name in ``DIR/prefixkv-v1/tmp`` and renamed into
place (``os.replace`` is atomic on POSIX), so a reader never sees a half-written record under
a real name, even after a ``kill -9`` mid-write; leftovers of dead writers are removed at
start. No fsync: after a power loss a file may be short or zeroed, which verification on
every load catches (the record is removed and never served).

Files are private and never followed (:mod:`prefixkv.tiers.files`): directories 0700, files
0600 whatever the umask; a temporary is created exclusively (``O_EXCL | O_NOFOLLOW``) under
an unpredictable name; every open, rename and removal goes through directory descriptors
without following a symlink. ``sharing()`` says whether others can write into the
directory (then records must be sealed with a key, see :func:`prefixkv.tiers.policy`).

The index (name -> size, least recently used first) lives in RAM and is rebuilt at start from
the files: each file's header is read and its size checked, and a truncated, misnamed or
old-format file (or anything not a regular file) is removed and counted. Startup reads ~100
bytes per file.

Two processes on one directory never corrupt it: names are content-addressed (a name fixes
the record's bytes), writes are atomic renames, and a file removed by one process is a miss
for the other. Each process bounds only what it knows of, so two processes may together hold
up to twice the capacity; give each its own directory for a strict bound.

A failed write (a full disk, an unwritable directory) is counted in ``errors``, logged once,
and writes pause for ``retry_after`` seconds; reads go on. Never raises from get/put.
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

from prefixkv.tiers import files
from prefixkv.tiers.protocol import NAME_BYTES, NoTierEvents, TierCounters, TierEvents, hex_name
from prefixkv.tiers.record import HEADER_BYTES, VerificationError, read_header

log = logging.getLogger("prefixkv.tiers.disk")
SUFFIX = ".kv"
DIRECTORY = "prefixkv-v1"


class DiskTier:
    """Implements Tier over one directory. Thread-safe (one lock around the index; file I/O
    runs outside it)."""

    name = "disk"

    def __init__(self, directory: str | Path, capacity_bytes: int, retry_after: float = 10.0):
        if not isinstance(capacity_bytes, int) or capacity_bytes < 1:
            raise ValueError(
                f"disk tier capacity must be a positive integer, got {capacity_bytes!r}"
            )
        self.root = Path(directory) / DIRECTORY
        self.capacity_bytes = capacity_bytes
        self.retry_after = retry_after
        self._lock = threading.Lock()
        self.events: TierEvents = NoTierEvents()  # told under the lock (see TierEvents)
        self._files: OrderedDict[bytes, int] = OrderedDict()  # name -> bytes, LRU first
        self._bytes = 0
        self._reads = self._writes = self._evicted = self._errors = self._corrupt = 0
        self._read_seconds = self._write_seconds = 0.0
        self._paused_until = 0.0
        self._root_fd: int | None = None  # the directory checked at start, held open
        self._tmp_fd: int | None = None
        self._shared: str | None = None
        try:
            files.make_dirs(self.root / "tmp")
            self._root_fd = files.open_dir(self.root)
            self._tmp_fd = files.open_dir("tmp", self._root_fd)
            self._shared = files.why_shared(self.root, self._root_fd)
            self._load()
        except OSError as exc:
            self._failed("cannot use the disk tier directory", exc)

    def sharing(self) -> str | None:
        """Why others can write records here (see :mod:`prefixkv.tiers.files`); None when
        the directory is private to this user, or unusable (then nothing is read)."""
        return self._shared

    # --- start ---------------------------------------------------------------------------

    def _load(self) -> None:
        """Index the files already there (oldest first), removing what cannot be a record."""
        self._remove_stale_temporaries()
        root = self._fd()
        found = []
        for shard in os.scandir(root):
            if len(shard.name) != 2 or not shard.is_dir(follow_symlinks=False):
                continue
            shard_fd = files.open_dir(shard.name, root)
            try:
                for entry in os.scandir(shard_fd):
                    if entry.name.endswith(SUFFIX):
                        found += self._indexed(entry.name, shard_fd)
            finally:
                os.close(shard_fd)
        for _, name, size in sorted(found):
            self._files[name] = size
            self._bytes += size
        self._evict_over(0)

    def _indexed(self, filename: str, shard_fd: int) -> list[tuple[float, bytes, int]]:
        """``[(mtime, name, size)]`` of one record file, or [] after removing it if it
        cannot be a whole record of this format under its own name."""
        try:
            name = bytes.fromhex(filename[: -len(SUFFIX)])
            head = read_header(files.read_regular(filename, shard_fd, HEADER_BYTES))
            info = os.stat(filename, dir_fd=shard_fd, follow_symlinks=False)
            if len(name) != NAME_BYTES or head.name != name:
                raise VerificationError("name", "file name and record name differ")
            if head.record_bytes != info.st_size:
                raise VerificationError("truncated", f"{info.st_size} of {head.record_bytes}")
        except (ValueError, OSError) as exc:  # VerificationError is a ValueError
            log.warning("disk tier: removing %s (%s)", filename, exc)
            self._corrupt += 1
            files.unlink(filename, shard_fd)
            return []
        return [(info.st_mtime, name, info.st_size)]

    def _remove_stale_temporaries(self) -> None:
        tmp = self._fd(temporary=True)
        for entry in os.scandir(tmp):
            pid = entry.name.split("-", 1)[0]
            if not (pid.isdigit() and _alive(int(pid))):
                files.unlink(entry.name, tmp)

    # --- Tier ----------------------------------------------------------------------------

    def get_many(self, names: Sequence[bytes]) -> list[bytes | bytearray | None]:
        """Read each held name's file whole (None if not held, gone or unreadable)."""
        out: list[bytes | bytearray | None] = []
        for name in names:
            with self._lock:
                size = self._files.get(name)
                if size is not None:
                    self._files.move_to_end(name)
            out.append(None if size is None else self._read(name, size))
        return out

    def _read(self, name: bytes, size: int) -> bytearray | None:
        start = time.perf_counter()
        shard, filename = self._where(name)
        try:
            shard_fd = files.open_dir(shard, self._fd())
            try:
                data = files.read_regular(filename, shard_fd, size)
            finally:
                os.close(shard_fd)
        except FileNotFoundError:  # removed by another process sharing the directory
            self._forget(name)
            return None
        except files.NotARegularFile as exc:  # planted: never followed, never served
            log.warning("disk tier: removing %s/%s (%s)", shard, filename, exc.strerror)
            self.discard(name)
            return None
        except OSError as exc:
            self._failed("read failed", exc)
            return None
        with self._lock:
            self._reads += 1
            self._read_seconds += time.perf_counter() - start
        return data  # writable: decoding needs no copy; a wrong size fails verification

    def holds(self, names: Sequence[bytes]) -> list[bool]:
        """Whether each name is held, as far as this process knows (no file is opened)."""
        with self._lock:
            return [name in self._files for name in names]

    def notice(self, names: Sequence[bytes]) -> list[bool]:
        """``holds``, after indexing the files of ``names`` that another process sharing
        the directory wrote since this one started (each file's header read and its size
        checked, as at start; a file that cannot be a record is removed): for a reader in
        one process of records a writer in another keeps writing (vLLM's scheduler and
        worker). One ``stat`` and one header read per name not yet indexed."""
        found = []
        for name in names:
            with self._lock:
                if name in self._files:
                    continue
            shard, filename = self._where(name)
            try:
                shard_fd = files.open_dir(shard, self._fd())
            except OSError:  # no such shard yet: no such file
                continue
            try:
                os.stat(filename, dir_fd=shard_fd, follow_symlinks=False)
                found += self._indexed(filename, shard_fd)
            except FileNotFoundError:
                pass
            finally:
                os.close(shard_fd)
        with self._lock:
            for _, name, size in found:
                if name not in self._files:
                    self._files[name] = size
                    self._bytes += size
                    self.events.stored(self.name, (name,))
            self._evict_over(0)
        return self.holds(names)

    def put_many(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        for name, record in records:
            with self._lock:
                if name in self._files or time.monotonic() < self._paused_until:
                    continue
            self._write(name, record)

    def _write(self, name: bytes, record: bytes) -> None:
        start = time.perf_counter()
        shard, filename = self._where(name)
        tmp = f"{os.getpid()}-{secrets.token_hex(12)}"  # the pid: for the start-up cleanup
        try:
            tmp_fd = self._fd(temporary=True)
            shard_fd = files.open_or_make_dir(shard, self._fd())
            try:
                files.write_new(tmp, tmp_fd, record)
                try:
                    os.replace(tmp, filename, src_dir_fd=tmp_fd, dst_dir_fd=shard_fd)
                except OSError:
                    files.unlink(tmp, tmp_fd)
                    raise
            finally:
                os.close(shard_fd)
        except OSError as exc:
            self._failed("write failed", exc)
            with self._lock:
                self._paused_until = time.monotonic() + self.retry_after
            return
        with self._lock:
            if name not in self._files:
                self._files[name] = len(record)
                self._bytes += len(record)
                self.events.stored(self.name, (name,))
            self._writes += 1
            self._write_seconds += time.perf_counter() - start
            self._evict_over(0)

    def discard(self, name: bytes) -> None:
        self._forget(name)
        try:
            self._remove(name)
        except OSError as exc:
            self._failed("remove failed", exc)

    def announce(self) -> None:
        """Every file indexed now, oldest first (names only: what they hold is sealed or
        unread)."""
        with self._lock:
            if self._files:
                self.events.stored(self.name, list(self._files))

    def counters(self) -> TierCounters:
        with self._lock:
            return TierCounters(
                blocks=len(self._files),
                bytes=self._bytes,
                capacity_bytes=self.capacity_bytes,
                reads=self._reads,
                read_seconds=self._read_seconds,
                writes=self._writes,
                write_seconds=self._write_seconds,
                evicted_blocks=self._evicted,
                errors=self._errors,
                corrupt_blocks=self._corrupt,
            )

    def close(self) -> None:
        """Close the directory descriptors; later calls answer misses. Idempotent."""
        with self._lock:
            fds, self._root_fd, self._tmp_fd = (self._root_fd, self._tmp_fd), None, None
        for fd in fds:
            if fd is not None:
                os.close(fd)

    def check_invariants(self) -> None:
        """The index matches the files (when no other process shares the directory) and its
        byte count, within capacity. O(files)."""
        with self._lock:
            on_disk = {
                bytes.fromhex(p.stem): p.stat().st_size for p in self.root.glob(f"??/*{SUFFIX}")
            }
            if on_disk != dict(self._files):
                raise AssertionError("DiskTier: the index and the files differ")
            if sum(self._files.values()) != self._bytes:
                raise AssertionError("DiskTier: the byte count is off")
            if self._bytes > self.capacity_bytes:
                raise AssertionError("DiskTier: over capacity")

    # --- internals -----------------------------------------------------------------------

    def _fd(self, temporary: bool = False) -> int:
        """The root (or tmp) directory's descriptor; OSError once closed or never opened."""
        fd = self._tmp_fd if temporary else self._root_fd
        if fd is None:
            raise OSError(errno.EBADF, "the disk tier directory is not open", str(self.root))
        return fd

    @staticmethod
    def _where(name: bytes) -> tuple[str, str]:
        """(shard directory, file name) of a record."""
        text = hex_name(name)
        return text[:2], f"{text}{SUFFIX}"

    def _remove(self, name: bytes) -> None:
        shard, filename = self._where(name)
        try:
            shard_fd = files.open_dir(shard, self._fd())
        except FileNotFoundError:
            return
        try:
            files.unlink(filename, shard_fd)
        finally:
            os.close(shard_fd)

    def _forget(self, name: bytes) -> None:
        with self._lock:
            size = self._files.pop(name, None)
            if size is not None:
                self._bytes -= size
                self.events.removed(self.name, (name,))

    def _evict_over(self, incoming: int) -> None:
        """Under the lock: remove least recently used files until the new bytes fit."""
        while self._files and self._bytes + incoming > self.capacity_bytes:
            name, size = self._files.popitem(last=False)
            self._bytes -= size
            self._evicted += 1
            self.events.removed(self.name, (name,))
            try:
                self._remove(name)
            except OSError as exc:
                log.warning("disk tier: cannot remove %s: %s", hex_name(name), exc)

    def _failed(self, what: str, exc: OSError) -> None:
        """Count an I/O failure; log it unless writes are already paused for one."""
        with self._lock:
            self._errors += 1
            quiet = time.monotonic() < self._paused_until
        if not quiet:
            log.warning("disk tier %s: %s: %s", self.root, what, exc)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

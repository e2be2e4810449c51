"""Tier keys: the secret that seals records in the disk and Redis tiers.

A key is 32 random bytes written as 64 hex digits (surrounding blanks and one newline
ignored), in a key file (``--tier-key-file``, ``PREFIXKV_TIER_KEY_FILE``) or in the
environment variable ``PREFIXKV_TIER_KEY``; never on the command line, where every user of
the machine reads it in ``ps``. ``prefixkv tier-key FILE`` writes a fresh one, mode 0600.

A key file must be a regular file (a symlink to one is fine: secret mounts use them) owned
by the effective user or root, with no permission bits for group or others: a key others
can read lets them forge records. Anything else is refused with a message naming the fix.

From the key, HKDF-SHA256 derives independent subkeys, one per use (distinct ``info``
labels): the AEAD key that seals records and the key of block names. A :class:`TierKey`
never shows its bytes: not in its repr, not in an error message.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
KEY_HEX_DIGITS = 2 * KEY_BYTES
_MAX_FILE_BYTES = 4096  # a key file is ~65 bytes; read no more than this of anything
_MAKE_ONE = "`prefixkv tier-key FILE` writes one"


class TierKeyError(ValueError):
    """A key that cannot be used: the message names the source and the fix, never the key."""


class TierKey:
    """A 256-bit master key. Immutable; its bytes stay inside (``derive`` hands out
    subkeys only)."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        """Raises TierKeyError unless ``secret`` is exactly 32 bytes."""
        if not isinstance(secret, bytes) or len(secret) != KEY_BYTES:
            size = len(secret) if isinstance(secret, bytes) else type(secret).__name__
            raise TierKeyError(f"a tier key has {KEY_BYTES} bytes, got {size}")
        self._secret = secret

    @classmethod
    def generate(cls) -> TierKey:
        return cls(secrets.token_bytes(KEY_BYTES))

    @classmethod
    def from_text(cls, text: str, source: str) -> TierKey:
        """The key written in ``text`` (64 hex digits); TierKeyError naming ``source`` (a
        file or variable name) and what is wrong, without quoting ``text``."""
        body = text.strip()
        if len(body) != KEY_HEX_DIGITS or any(c not in "0123456789abcdefABCDEF" for c in body):
            raise TierKeyError(
                f"{source}: a tier key is {KEY_HEX_DIGITS} hex digits (256 bits; {_MAKE_ONE}), "
                f"found {len(body)} characters{'' if body.isascii() else ' (not ASCII)'}"
            )
        return cls(bytes.fromhex(body))

    @classmethod
    def from_file(cls, path: str | Path) -> TierKey:
        """The key in the file at ``path``, after checking that only its owner can use it.
        Raises TierKeyError naming the path and the fix."""
        where = f"tier key file {path}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # no FIFO stalls
        except OSError as exc:
            raise TierKeyError(f"{where}: cannot open it ({exc.strerror})") from None
        try:
            info = os.fstat(fd)  # of what was opened: no race with a rename
            if not stat.S_ISREG(info.st_mode):
                raise TierKeyError(f"{where}: not a regular file")
            if info.st_uid not in (os.geteuid(), 0):
                raise TierKeyError(
                    f"{where}: owned by uid {info.st_uid}, not by this user "
                    f"(uid {os.geteuid()}) or root: others could have written it"
                )
            if info.st_mode & 0o077:
                raise TierKeyError(
                    f"{where}: mode {stat.S_IMODE(info.st_mode):04o} gives group or others "
                    f"access to it; make it private: chmod 600 {path}"
                )
            data = os.read(fd, _MAX_FILE_BYTES)
        finally:
            os.close(fd)
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise TierKeyError(
                f"{where}: not text; a tier key file holds {KEY_HEX_DIGITS} hex digits "
                f"({_MAKE_ONE})"
            ) from None
        return cls.from_text(text, where)

    def derive(self, label: bytes, length: int = 32) -> bytes:
        """The subkey for ``label`` (HKDF-SHA256, no salt: the master key is uniformly
        random): independent of every other label's."""
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=label).derive(
            self._secret
        )

    def __repr__(self) -> str:
        return "TierKey(<hidden>)"

    __str__ = __repr__

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("a TierKey is not pickled (its bytes would leave the process)")


def write_key_file(path: str | Path) -> None:
    """Write a fresh key to a new file at ``path``, mode 0600 whatever the umask. Refuses
    (FileExistsError) to replace anything there, a symlink included."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (secrets.token_hex(KEY_BYTES) + "\n").encode())
    finally:
        os.close(fd)

"""Seals: what guards a record's body (its token ids and KV) once it leaves the process.

- :class:`AeadSeal` (with a :class:`~prefixkv.tiers.key.TierKey`): AES-256-GCM. The body is
  encrypted and authenticated, the record's clear header is the associated data, the nonce
  is 96 random bits per record. Without the key a record cannot be read (no token id, no KV)
  nor forged, and a record moved to another name fails (the name is in the header). AES-GCM
  runs on AES-NI/VAES, faster here than ChaCha20-Poly1305 (``prefixkv bench tiers``
  measures both seals: ``docs/results.md``, "tiers").
  Random nonces bound one key to ~2**32 records before the collision risk passes 2**-32:
  rotate the key (a new key renames every block) well before that.
- :class:`ChecksumSeal` (no key): the body in clear with an XXH3-128 of header and body.
  It detects accidents (a torn write, a flipped bit, a file of another version), NOT an
  attacker, who recomputes it. Only for stores no one else can write (see
  :func:`prefixkv.tiers.tiered.check_policy`).

A reader accepts only records of its own seal: with a key, a record in clear (whatever its
checksum) is refused, so dropping the seal is no way around it.
"""

from __future__ import annotations

import os
from typing import Protocol

import xxhash
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from prefixkv.tiers.key import TierKey
from prefixkv.tiers.record import NONCE_BYTES, TRAILER_BYTES, VerificationError

AEAD_LABEL = b"prefixkv tiers: record AEAD (AES-256-GCM), record format 2"


class Seal(Protocol):
    """Seals record bodies. Thread-safe."""

    kind: int
    """Stored in each record's header: 0 checksum, 1 AES-256-GCM."""
    name: str

    def nonce(self) -> bytes:
        """The nonce of a new record (``NONCE_BYTES``)."""
        ...

    def seal(self, nonce: bytes, header: bytes, body: bytes) -> bytes:
        """``body`` sealed under ``header`` (the associated data): ``len(body) +
        TRAILER_BYTES`` bytes."""
        ...

    def open(self, nonce: bytes, header: memoryview, sealed: memoryview) -> memoryview:
        """The body of ``sealed``, if it and ``header`` are exactly what ``seal`` made;
        else raises VerificationError("seal")."""
        ...


class ChecksumSeal:
    """No secret: a checksum against accidents, not a seal against anyone."""

    kind = 0
    name = "checksum"

    def nonce(self) -> bytes:
        return bytes(NONCE_BYTES)

    def seal(self, nonce: bytes, header: bytes, body: bytes) -> bytes:
        return body + self._digest(header, body)

    def open(self, nonce: bytes, header: memoryview, sealed: memoryview) -> memoryview:
        body = sealed[: len(sealed) - TRAILER_BYTES]
        if self._digest(header, body) != sealed[len(body) :]:
            raise VerificationError("checksum", "the record's bytes changed since it was written")
        return body

    @staticmethod
    def _digest(header: bytes | memoryview, body: bytes | memoryview) -> bytes:
        digest = xxhash.xxh3_128(header)
        digest.update(body)
        return digest.digest()


class AeadSeal:
    """AES-256-GCM under a subkey of ``key``."""

    kind = 1
    name = "aes-256-gcm"

    def __init__(self, key: TierKey) -> None:
        self._aead = AESGCM(key.derive(AEAD_LABEL))

    def nonce(self) -> bytes:
        return os.urandom(NONCE_BYTES)

    def seal(self, nonce: bytes, header: bytes, body: bytes) -> bytes:
        return self._aead.encrypt(nonce, body, header)

    def open(self, nonce: bytes, header: memoryview, sealed: memoryview) -> memoryview:
        try:
            return memoryview(self._aead.decrypt(nonce, sealed, header))
        except InvalidTag:
            raise VerificationError(
                "seal", "authentication failed: forged, damaged, moved or sealed with another key"
            ) from None

    def __repr__(self) -> str:
        return "AeadSeal(<key hidden>)"


def seal_for(key: TierKey | None) -> Seal:
    """The seal records get under ``key``: AEAD with one, a checksum without."""
    return ChecksumSeal() if key is None else AeadSeal(key)

"""Records: one KV block as self-describing bytes, and their verification on load.

Layout (little-endian)::

    header   magic "PKVB", version u16, codec u8, 0 u8,
             fingerprint 16 B, name 16 B, parent 16 B,
             block_size u32, token_bytes u32, payload_bytes u64, checksum u64
    tokens   the block's token ids (uint32)
    payload  the block's KV as the codec encoded it

``checksum`` is XXH3-64 over the header (checksum field zeroed), tokens and payload. A record
is served only if it is whole, its checksum holds, and its fingerprint, name, parent and
tokens are exactly the ones the lookup expected: a key collision, a key bug, a planted or
foreign record, a truncated or flipped file all fail one of these and count as a miss.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

import xxhash

_HEADER = struct.Struct("<4sHBB16s16s16sIIQQ")
HEADER_BYTES = _HEADER.size
MAGIC = b"PKVB"
VERSION = 1
_CHECKSUM_AT = HEADER_BYTES - 8


class VerificationError(ValueError):
    """A record that must not be served; ``reason`` is one word for counters and logs."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class Expected(NamedTuple):
    """What the lookup knows a record under ``name`` must hold."""

    fingerprint: bytes
    name: bytes
    parent: bytes
    tokens: bytes
    """The block's token ids (canonical uint32 bytes)."""


class Header(NamedTuple):
    codec: int
    fingerprint: bytes
    name: bytes
    parent: bytes
    block_size: int
    token_bytes: int
    payload_bytes: int
    checksum: int

    @property
    def record_bytes(self) -> int:
        return HEADER_BYTES + self.token_bytes + self.payload_bytes


def encode(
    codec: int, fingerprint: bytes, name: bytes, parent: bytes, tokens: bytes, payload: bytes
) -> bytes:
    """One record. ``tokens``: the block's ids; ``payload``: the codec's bytes."""
    block_size = len(tokens) // 4
    fields = (MAGIC, VERSION, codec, 0, fingerprint, name, parent, block_size, len(tokens))
    head = _HEADER.pack(*fields, len(payload), 0)
    digest = xxhash.xxh3_64(head)
    digest.update(tokens)
    digest.update(payload)
    return b"".join((_HEADER.pack(*fields, len(payload), digest.intdigest()), tokens, payload))


def read_header(raw: bytes | bytearray | memoryview) -> Header:
    """The header of ``raw`` (at least HEADER_BYTES long). Raises VerificationError
    ("truncated", "format") when it cannot be a record."""
    if len(raw) < HEADER_BYTES:
        raise VerificationError("truncated", f"{len(raw)} bytes, a header has {HEADER_BYTES}")
    magic, version, *rest = _HEADER.unpack_from(raw)
    if magic != MAGIC or version != VERSION:
        raise VerificationError("format", f"magic {magic!r} version {version}")
    return Header(rest[0], *rest[2:])


def verify(raw: bytes | bytearray | memoryview, expected: Expected) -> tuple[int, memoryview]:
    """Check ``raw`` against ``expected``; return (codec, payload view). Raises
    VerificationError naming the first failed check. O(record bytes) for the checksum."""
    head = read_header(raw)
    if len(raw) != head.record_bytes:
        raise VerificationError("truncated", f"{len(raw)} bytes, expected {head.record_bytes}")
    view = memoryview(raw)
    digest = xxhash.xxh3_64(bytes(view[:_CHECKSUM_AT]) + bytes(8))
    digest.update(view[HEADER_BYTES:])
    if digest.intdigest() != head.checksum:
        raise VerificationError("checksum", "the record's bytes changed since it was written")
    if head.fingerprint != expected.fingerprint:
        raise VerificationError("fingerprint", "written by another model, dtype or layout")
    if head.name != expected.name or head.parent != expected.parent:
        raise VerificationError("name", "stored under a name that is not its own")
    tokens = view[HEADER_BYTES : HEADER_BYTES + head.token_bytes]
    if tokens != expected.tokens:
        raise VerificationError("tokens", "the record holds other tokens than the prompt's")
    return head.codec, view[HEADER_BYTES + head.token_bytes :]

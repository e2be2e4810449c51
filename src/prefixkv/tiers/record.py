"""Records: one KV block as self-describing bytes, and their verification on load.

Layout, format 2 (little-endian)::

    header   magic "PKVB", version u16 = 2, codec u8, seal u8,
             fingerprint 16 B, name 16 B, parent 16 B,
             block_size u32, token_bytes u32, payload_bytes u64, nonce 12 B
    body     the block's token ids (uint32), then its KV as the codec encoded it
    trailer  16 B

The header is in clear (a tier reads it to index files) and is the seal's associated data;
the body and trailer are the seal's (:mod:`prefixkv.tiers.seal`): with a tier key, body
encrypted under AES-256-GCM and the trailer its tag; without, body in clear and the
trailer an XXH3-128 checksum of header and body (accident detection only).

A record is served only if it is whole, of this format, of the reader's seal, its seal
opens (authentic, or with no key: undamaged), and its fingerprint, name, parent and tokens
are exactly the ones the lookup expected: a forged, planted, moved or foreign record, a key
bug, a truncated or flipped file, a record of format 1: each fails one check and counts as
a miss.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from prefixkv.tiers.seal import Seal

NONCE_BYTES = 12
TRAILER_BYTES = 16
"""The AEAD tag or the checksum, after the body."""
_HEADER = struct.Struct(f"<4sHBB16s16s16sIIQ{NONCE_BYTES}s")
HEADER_BYTES = _HEADER.size
MAGIC = b"PKVB"
VERSION = 2


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
    seal: int
    fingerprint: bytes
    name: bytes
    parent: bytes
    block_size: int
    token_bytes: int
    payload_bytes: int
    nonce: bytes

    @property
    def record_bytes(self) -> int:
        return HEADER_BYTES + self.token_bytes + self.payload_bytes + TRAILER_BYTES


def encode(
    seal: Seal,
    codec: int,
    fingerprint: bytes,
    name: bytes,
    parent: bytes,
    tokens: bytes,
    payload: bytes,
) -> bytes:
    """One record, sealed by ``seal``. ``tokens``: the block's ids; ``payload``: the
    codec's bytes."""
    nonce = seal.nonce()
    fields = (MAGIC, VERSION, codec, seal.kind, fingerprint, name, parent, len(tokens) // 4)
    head = _HEADER.pack(*fields, len(tokens), len(payload), nonce)
    return head + seal.seal(nonce, head, tokens + payload)


def read_header(raw: bytes | bytearray | memoryview) -> Header:
    """The header of ``raw`` (at least HEADER_BYTES long). Raises VerificationError
    ("truncated", "format") when it cannot be a record of this format."""
    if len(raw) < HEADER_BYTES:
        raise VerificationError("truncated", f"{len(raw)} bytes, a header has {HEADER_BYTES}")
    if bytes(raw[:4]) != MAGIC or struct.unpack_from("<H", raw, 4)[0] != VERSION:
        found = struct.unpack_from("<H", raw, 4)[0]
        raise VerificationError("format", f"magic {bytes(raw[:4])!r} version {found}")
    _, _, *fields = _HEADER.unpack_from(raw)
    return Header(*fields)


def verify(
    raw: bytes | bytearray | memoryview, expected: Expected, seal: Seal
) -> tuple[int, memoryview]:
    """Check ``raw`` against ``expected`` and open its seal; return (codec, payload view).
    Raises VerificationError naming the first failed check. O(record bytes)."""
    head = read_header(raw)
    if len(raw) != head.record_bytes:
        raise VerificationError("truncated", f"{len(raw)} bytes, expected {head.record_bytes}")
    if head.seal != seal.kind:
        raise VerificationError(
            "seal", f"sealed as kind {head.seal}; this reader takes {seal.name}"
        )
    if head.fingerprint != expected.fingerprint:
        raise VerificationError("fingerprint", "written by another model, dtype or layout")
    if head.name != expected.name or head.parent != expected.parent:
        raise VerificationError("name", "stored under a name that is not its own")
    view = memoryview(raw)
    body = seal.open(head.nonce, view[:HEADER_BYTES], view[HEADER_BYTES:])
    if body[: head.token_bytes] != expected.tokens:
        raise VerificationError("tokens", "the record holds other tokens than the prompt's")
    return head.codec, body[head.token_bytes :]

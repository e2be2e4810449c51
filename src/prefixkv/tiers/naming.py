"""Block names: 128-bit chained hashes that hold across processes and machines.

The name of block ``i`` of a token sequence is::

    name[i] = xxh3_128(parent || tokens of block i, seed=SEED)
    parent  = name[i - 1], or for block 0 the *root*:
    root    = xxh3_128(model fingerprint || block size || namespace key, seed=SEED)

so a name stands for the whole prefix up to and including its block, under one model, one
block size and one namespace. xxHash's XXH3 (the ``xxhash`` package) is seeded explicitly and
is the same on every platform; Python's ``hash()`` is salted per process and is never used.

With a tier key, both hashes are BLAKE2b-128 keyed by a subkey of it (HKDF label
``NAME_LABEL``) instead: anyone can recompute an unkeyed name for a guessed prompt and look
for it in a shared store (learning that some tenant sent it), nobody can without the key.
A new key renames every block: records under an old key are simply never asked for.

The namespace enters only through this hash: nothing readable of a tenant or salt reaches a
shared store. A namespace is keyed by its ``repr``, which is stable across processes for the
values prefixkv uses (None, str, int, and :class:`~prefixkv.cache.tenants.Namespace` tuples
of those). A name is never trusted alone: every loaded record also carries its tokens, its
parent's name and the model fingerprint, and all are compared (:mod:`prefixkv.tiers.record`).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Hashable

import xxhash

from prefixkv.cache.tenants import Namespace
from prefixkv.tiers.key import TierKey
from prefixkv.tokens import TOKEN_BYTES

SEED = 0x70726566_69786B76  # "prefixkv"; changing it renames every stored block
NAME_LABEL = b"prefixkv tiers: block names (keyed BLAKE2b-128)"


def namespace_key(namespace: Hashable) -> bytes:
    """The bytes a namespace contributes to names: empty for None, else a tagged,
    length-prefixed encoding of its values, so that no class name or ``repr`` is part of a
    stored name (renaming a class must not orphan records). A
    :class:`~prefixkv.cache.tenants.Namespace` is its tenant and salt; str, bytes, int and
    None values and tuples of them are encoded as themselves. TypeError naming the type for
    any other value (a tier could not name its blocks stably)."""
    return b"" if namespace is None else _encoded(namespace)


def _encoded(value: object) -> bytes:
    if isinstance(value, Namespace):
        return b"N" + _parts((value.tenant, value.salt))
    if value is None:
        return b"n"
    if isinstance(value, str):
        return b"s" + value.encode("utf-8", "surrogatepass")
    if isinstance(value, bytes):
        return b"b" + value
    if isinstance(value, int):  # bool included: True and 1 name alike, as they hash alike
        return b"i" + str(int(value)).encode()
    if isinstance(value, tuple):
        return b"t" + _parts(value)
    raise TypeError(
        f"a namespace kept in a tier is made of str, bytes, int, None, tuples and Namespace; "
        f"got {type(value).__name__}"
    )


def _parts(values: tuple[object, ...]) -> bytes:
    return b"".join(struct.pack("<Q", len(e)) + e for e in map(_encoded, values))


def fingerprint_of(*parts: bytes) -> bytes:
    """A 16-byte fingerprint of ``parts`` (length-prefixed, so the split is part of it)."""
    digest = xxhash.xxh3_128(seed=SEED)
    for part in parts:
        digest.update(struct.pack("<Q", len(part)))
        digest.update(part)
    return digest.digest()


class BlockNamer:
    """Names the blocks of token sequences for one model fingerprint and block size, keyed
    by ``key`` if given. Stateless after construction; thread-safe."""

    def __init__(self, fingerprint: bytes, block_size: int, key: TierKey | None = None) -> None:
        if len(fingerprint) != 16:
            raise ValueError(f"a model fingerprint has 16 bytes, got {len(fingerprint)}")
        self.fingerprint = fingerprint
        self.block_size = block_size
        self._block_token_bytes = block_size * TOKEN_BYTES
        # A keyed hasher to copy per name (copying skips the key setup).
        self._keyed = (
            None if key is None else hashlib.blake2b(key=key.derive(NAME_LABEL), digest_size=16)
        )

    def root(self, namespace: Hashable) -> bytes:
        """The parent name of block 0 in ``namespace``."""
        parts = (self.fingerprint, struct.pack("<I", self.block_size), namespace_key(namespace))
        if self._keyed is None:
            return fingerprint_of(*parts)
        digest = self._keyed.copy()
        for part in parts:
            digest.update(struct.pack("<Q", len(part)) + part)
        return digest.digest()

    def names(self, tokens: bytes, namespace: Hashable, num_blocks: int) -> list[bytes]:
        """Names of the first ``num_blocks`` full blocks of ``tokens`` (canonical uint32
        bytes, see :mod:`prefixkv.tokens`). O(num_blocks), ~0.1 us per block."""
        return self.extend(self.root(namespace), tokens, 0, num_blocks)

    def extend(self, parent: bytes, tokens: bytes, start: int, stop: int) -> list[bytes]:
        """Names of blocks ``start .. stop - 1`` of ``tokens``, given ``parent``, the name of
        block ``start - 1`` (or the root). O(stop - start)."""
        size = self._block_token_bytes
        if stop * size > len(tokens):
            raise ValueError(f"{stop} blocks need {stop * size} token bytes")
        view = memoryview(tokens)
        out = []
        keyed = self._keyed
        for i in range(start, stop):
            block = view[i * size : (i + 1) * size]
            if keyed is None:
                parent = xxhash.xxh3_128_digest(parent + block, seed=SEED)
            else:
                digest = keyed.copy()
                digest.update(parent)
                digest.update(block)
                parent = digest.digest()
            out.append(parent)
        return out

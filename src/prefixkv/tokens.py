"""Token sequences to their canonical byte form.

Every structure in prefixkv compares token prefixes as bytes: each token id is one native
unsigned 32-bit integer, so a block of ``block_size`` tokens is ``4 * block_size`` bytes and
two prefixes are equal exactly when their bytes are equal (``memcmp``, no hashing involved).

Accepted inputs: a list or tuple of ints, an ``array.array`` of integers, a 1-D NumPy integer
array, a 1-D integer ``torch.Tensor`` (any device), or any other iterable of ints. Every id
must lie in ``[0, 2**32)``.
"""

from __future__ import annotations

import array
import sys
from typing import Any

import numpy as np

TOKEN_BYTES = 4
"""Bytes per token id in the canonical form."""

MAX_TOKEN_ID = 2**32 - 1

if array.array("I").itemsize != TOKEN_BYTES:  # pragma: no cover - exotic platforms only
    raise ImportError("prefixkv needs a platform whose C unsigned int is 32 bits")

_ID_RANGE = f"token ids must be integers in [0, {MAX_TOKEN_ID}]"


class TokenBytes(bytes):
    """Token ids already in canonical form (what :func:`as_token_bytes` returns).

    A distinct type so that plain ``bytes`` (for example text) are never mistaken for token
    ids, while converted ids can be passed between prefixkv layers without converting again.
    """

    __slots__ = ()


def as_token_bytes(tokens: Any) -> TokenBytes:
    """Return ``tokens`` as native uint32 bytes (``4 * len(tokens)`` bytes).

    Raises ``TypeError`` when ``tokens`` is not a 1-D sequence of integers (floats, strings,
    nested lists, boolean arrays) and ``ValueError`` when it has the wrong number of
    dimensions or an id outside ``[0, 2**32)``. Never mutates ``tokens``. O(n).
    """
    if type(tokens) is TokenBytes:
        return tokens
    if isinstance(tokens, (bytes, bytearray, memoryview, str)):
        raise TypeError(
            f"tokens must be a sequence of integer token ids, got {type(tokens).__name__}"
        )
    if isinstance(tokens, np.ndarray):
        return _from_numpy(tokens)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(tokens, torch.Tensor):
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be an integer tensor, got dtype {tokens.dtype}")
        return _from_numpy(tokens.detach().cpu().numpy())
    if isinstance(tokens, array.array):
        if tokens.typecode == "I":
            return TokenBytes(tokens)
        if tokens.typecode in "fdu":
            raise TypeError(f"tokens must hold integers, got array typecode {tokens.typecode!r}")
        return _from_numpy(np.frombuffer(tokens, dtype=tokens.typecode))
    try:
        return TokenBytes(array.array("I", tokens))
    except OverflowError:
        raise ValueError(f"{_ID_RANGE}; {_describe_bad(tokens)}") from None
    except TypeError:
        raise TypeError(f"{_ID_RANGE}; {_describe_bad(tokens)}") from None


def token_count(token_bytes: bytes) -> int:
    """Number of token ids in a canonical byte string."""
    return len(token_bytes) // TOKEN_BYTES


def tokens_from_bytes(token_bytes: bytes) -> list[int]:
    """Inverse of :func:`as_token_bytes` (for messages, tests and tiers)."""
    return array.array("I", token_bytes).tolist()


def _from_numpy(arr: np.ndarray[Any, Any]) -> TokenBytes:
    if arr.ndim != 1:
        raise ValueError(
            f"tokens must be 1-D, got shape {tuple(arr.shape)}"
            + ("; pass input_ids[0] for a batch of one" if arr.ndim == 2 else "")
        )
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"tokens must hold integers, got dtype {arr.dtype}")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) > MAX_TOKEN_ID):
        raise ValueError(f"{_ID_RANGE}; got min {int(arr.min())}, max {int(arr.max())}")
    return TokenBytes(np.ascontiguousarray(arr, dtype=np.uint32))


def _describe_bad(tokens: Any) -> str:
    """Name the first offending element, for error messages."""
    try:
        items = list(tokens)
    except TypeError:
        return f"got {type(tokens).__name__}, which is not iterable"
    for pos, item in enumerate(items):
        if isinstance(item, bool) or not hasattr(item, "__index__"):
            return f"element {pos} is {item!r} ({type(item).__name__})"
        if not 0 <= item.__index__() <= MAX_TOKEN_ID:
            return f"element {pos} is {item!r}"
    return "got an unsupported sequence"

"""Token sequences to their canonical byte form, read all at once or front to back on demand.

Every structure in prefixkv compares token prefixes as bytes: each token id is one native
unsigned 32-bit integer, so a block of ``block_size`` tokens is ``4 * block_size`` bytes and
two prefixes are equal exactly when their bytes are equal (``memcmp``, no hashing involved).

Accepted inputs: a list or tuple of ints, an ``array.array`` of any integer typecode
(``'b' 'B' 'h' 'H' 'i' 'I' 'l' 'L' 'q' 'Q'``), a 1-D NumPy integer array, a 1-D integer
``torch.Tensor`` (any device), :class:`TokenBytes`, or any other iterable of ints (read into a
list first). Every id must lie in ``[0, 2**32)``.

Two ways in:

- :func:`as_token_bytes` converts and validates the whole sequence;
- :class:`TokenReader` checks the container at once (its type; for arrays and tensors the
  dtype or typecode and the number of dimensions) and then converts ids only as far as its
  caller asks, validating exactly the ids it converts. The prefix index uses it so that a
  miss costs the first block, not the whole prompt.

Neither imports torch: a tensor is recognised only if torch is already imported.
"""

from __future__ import annotations

import array
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

TOKEN_BYTES = 4
"""Bytes per token id in the canonical form."""

MAX_TOKEN_ID = 2**32 - 1

if array.array("I").itemsize != TOKEN_BYTES:  # pragma: no cover - exotic platforms only
    raise ImportError("prefixkv needs a platform whose C unsigned int is 32 bits")

_ID_RANGE = f"token ids must be integers in [0, {MAX_TOKEN_ID}]"

_SMALL_READ = 96
"""Reads of at most this many ids from an array or tensor go through Python ints (about 0.5 us
+ 16 ns an id); longer ones through NumPy (about 2 us + 0.3 ns an id)."""

_STRIDED_READ = 96
_NUMPY_STRIDED_READ = 1536
"""Reads from an array of 8-byte integers: up to ``_STRIDED_READ`` ids through strided
memoryviews (about 0.4 us + 6 ns an id), up to ``_NUMPY_STRIDED_READ`` through NumPy's
strided copies (about 1 us + 1 ns an id), beyond that through one NumPy reduction and cast
(about 2 us + 0.2 ns an id)."""
_HIGH_HALF = 1 if sys.byteorder == "little" else 0  # where an 8-byte int keeps its high half
_ZERO_HALVES = memoryview(array.array("I", bytes(TOKEN_BYTES * _STRIDED_READ)))
_ZERO_BYTES = bytes(TOKEN_BYTES * _NUMPY_STRIDED_READ)

_ARRAY = array.array
_INT_TYPECODES = frozenset("bBhHiIlLqQ")
_WIDE_TYPECODES = frozenset(code for code in _INT_TYPECODES if array.array(code).itemsize == 8)
_ARRAY_DTYPES = {typecode: np.dtype(typecode) for typecode in _INT_TYPECODES}  # same C types
_max, _min = np.maximum.reduce, np.minimum.reduce


# Converts ids [start, stop) of a source to canonical bytes, validating each: bytes for a few
# ids (cheap to slice), a read-only format-'B' view of a new buffer for many (zero-copy
# slices); raises TypeError/ValueError naming the first bad id by its position.
_Convert = Callable[[Any, int, int], "bytes | memoryview"]
_NOTHING = memoryview(b"")


class TokenBytes(bytes):
    """Token ids already in canonical form (what :func:`as_token_bytes` returns).

    A distinct type so that plain ``bytes`` (for example text) are never mistaken for token
    ids, while converted ids can be passed between prefixkv layers without converting again.
    """

    __slots__ = ()


def as_token_bytes(tokens: Any) -> TokenBytes:
    """Return ``tokens`` as native uint32 bytes (``4 * len(tokens)`` bytes).

    A :class:`TokenBytes` is returned as it is (no copy, no check). Raises ``TypeError`` when
    ``tokens`` is not a 1-D sequence of integers (floats, strings, nested lists, boolean
    arrays) and ``ValueError`` when it has the wrong number of dimensions or an id outside
    ``[0, 2**32)``; the message names the first offending element. Never mutates ``tokens``.
    O(n).
    """
    if type(tokens) is TokenBytes:
        return tokens
    reader = TokenReader(tokens)
    return TokenBytes(reader.read_to(reader.num_tokens))


class TokenReader:
    """A token sequence converted to canonical bytes front to back, as far as asked.

    ``view`` holds the canonical bytes of the ids read so far: a prefix of the sequence, every
    id in it validated, in memory of the reader's own (never a view of the caller's mutable
    buffers); it is ``bytes`` while short and a read-only ``memoryview`` (format ``'B'``)
    once long, so that slicing it stays cheap either way. ``num_tokens`` is the length of the
    whole sequence.

    Construction checks the container in O(1) (O(n) only for an iterable that is not a list,
    tuple, array or tensor: it is read into a list), raising TypeError/ValueError as
    :func:`as_token_bytes` does for a malformed container, then reads the first
    ``min(head, num_tokens)`` ids. A :class:`TokenBytes` counts as read in full, at no cost.
    The reader keeps a reference to the source, which must not change while it is read.
    """

    __slots__ = ("_convert", "_source", "num_tokens", "view")

    def __init__(self, tokens: Any, head: int = 0) -> None:
        self.view: bytes | memoryview
        if type(tokens) is TokenBytes:
            self.view = memoryview(tokens)
            self.num_tokens = len(tokens) >> 2
            return
        source: Any
        convert: _Convert
        if type(tokens) is _ARRAY and tokens.typecode in _WIDE_TYPECODES:
            # SGLang's form, opened as ``_open_array`` does, two calls sooner (every match).
            source, convert, num = (tokens, _halves(tokens)), _from_wide_array, len(tokens)
        else:
            source, convert, num = _open(tokens)
        self._source = source
        self._convert = convert
        self.num_tokens = num
        self.view = convert(source, 0, head if head < num else num) if head and num else _NOTHING

    def read_to(self, stop: int) -> bytes | memoryview:
        """Read (and validate) ids up to ``min(stop, num_tokens)``; return ``view``.

        Raises TypeError/ValueError naming the first bad id among those newly read; ``view``
        is then unchanged. Cost: converting the new ids, plus copying what was read before
        into one buffer (none when at most ``_SMALL_READ`` ids were read: those are converted
        again instead).
        """
        start = len(self.view) >> 2
        stop = min(stop, self.num_tokens)
        if stop <= start:
            return self.view
        if start <= _SMALL_READ:
            self.view = self._convert(self._source, 0, stop)
        else:
            more = self._convert(self._source, start, stop)
            self.view = memoryview(b"".join((self.view, more)))
        return self.view


def token_count(token_bytes: bytes) -> int:
    """Number of token ids in a canonical byte string."""
    return len(token_bytes) // TOKEN_BYTES


def tokens_from_bytes(token_bytes: bytes) -> list[int]:
    """Inverse of :func:`as_token_bytes` (for messages, tests and tiers)."""
    return array.array("I", token_bytes).tolist()


# --- the source forms ------------------------------------------------------------------------


def _open(tokens: Any) -> tuple[Any, _Convert, int]:
    """Check the container of ``tokens``; return the source its converter slices, the
    converter, and the number of ids."""
    kind = type(tokens)  # exact types first: this runs on every match
    if kind is list or kind is tuple:
        return tokens, _from_list, len(tokens)
    if kind is _ARRAY:
        return _open_array(tokens)
    if isinstance(tokens, np.ndarray):
        return _checked_ndarray(tokens), _from_ndarray, len(tokens)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(tokens, torch.Tensor):
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise TypeError(f"tokens must be an integer tensor, got dtype {tokens.dtype}")
        return _checked_ndarray(tokens.detach().cpu().numpy()), _from_ndarray, len(tokens)
    if isinstance(tokens, array.array):
        return _open_array(tokens)
    if isinstance(tokens, (list, tuple)):
        return tokens, _from_list, len(tokens)
    if isinstance(tokens, (bytes, bytearray, memoryview, str)):
        raise TypeError(
            f"tokens must be a sequence of integer token ids, got {type(tokens).__name__}"
        )
    try:
        items = list(tokens)
    except TypeError:
        raise TypeError(
            f"tokens must be a sequence of integer token ids, got {type(tokens).__name__}"
        ) from None
    return items, _from_list, len(items)


def _open_array(arr: array.array[Any]) -> tuple[Any, _Convert, int]:
    if arr.typecode in _WIDE_TYPECODES:
        # The array and a view of it as 32-bit halves (made once per reader, not per read).
        return (arr, _halves(arr)), _from_wide_array, len(arr)
    convert = _ARRAY_CONVERTERS.get(arr.typecode)
    if convert is None:
        raise TypeError(f"tokens must hold integers, got array typecode {arr.typecode!r}")
    return arr, convert, len(arr)


def _halves(arr: array.array[int]) -> memoryview:
    """An array of 8-byte ints viewed as twice as many 32-bit halves (``_from_wide_array``)."""
    return memoryview(arr).cast("B").cast("I")


def _checked_ndarray(arr: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    if arr.ndim != 1:
        raise ValueError(
            f"tokens must be 1-D, got shape {tuple(arr.shape)}"
            + ("; pass input_ids[0] for a batch of one" if arr.ndim == 2 else "")
        )
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"tokens must hold integers, got dtype {arr.dtype}")
    return arr


def _from_list(items: Any, start: int, stop: int) -> bytes | memoryview:
    return _uint32s(items if start == 0 and stop == len(items) else items[start:stop], start)


def _from_uint32_array(arr: array.array[int], start: int, stop: int) -> bytes | memoryview:
    # Every uint32 is a valid id: nothing to check. A copy, so that no view of the caller's
    # array outlives the call (it could not be resized while one exists).
    if stop - start <= _SMALL_READ:
        return arr[start:stop].tobytes()
    return memoryview(arr[start:stop]).cast("B").toreadonly()


def _from_int_array(arr: array.array[int], start: int, stop: int) -> bytes | memoryview:
    count = stop - start
    if count <= _SMALL_READ:
        return _uint32s(arr[start:stop].tolist(), start)
    view = np.frombuffer(arr, _ARRAY_DTYPES[arr.typecode], count, start * arr.itemsize)
    return _narrow(view, start)


def _from_wide_array(
    source: tuple[array.array[int], memoryview], start: int, stop: int
) -> bytes | memoryview:
    """Ids of an array of 8-byte integers ('q', 'Q'; 'l', 'L' where a C long has 64 bits),
    given with its view as 32-bit halves.

    Viewed as 32-bit halves, an id is valid exactly when its high half is 0 (a negative one
    has 0xFFFFFFFF there), and then its low half is the canonical id.
    """
    arr, halves = source
    count = stop - start
    if count <= _STRIDED_READ:  # two strided C loops over memoryviews
        if halves[2 * start + _HIGH_HALF : 2 * stop : 2] != _ZERO_HALVES[:count]:
            raise _bad_id(arr[start:stop].tolist(), start)
        return halves[2 * start + 1 - _HIGH_HALF : 2 * stop : 2].tobytes()
    if count <= _NUMPY_STRIDED_READ:  # the same with NumPy's strided copies, and a memcmp
        pairs = np.frombuffer(arr, np.uint32, 2 * count, start * 8)
        if pairs[_HIGH_HALF::2].tobytes() != _ZERO_BYTES[: TOKEN_BYTES * count]:
            raise _bad_id(arr[start:stop].tolist(), start)
        return pairs[1 - _HIGH_HALF :: 2].tobytes()
    wide = np.frombuffer(arr, np.uint64, count, start * 8)  # a negative id reads as huge
    if _max(wide) > MAX_TOKEN_ID:
        raise _bad_id(arr[start:stop].tolist(), start)
    return _byte_view(wide.astype(np.uint32))


def _from_ndarray(arr: np.ndarray[Any, Any], start: int, stop: int) -> bytes | memoryview:
    if stop - start <= _SMALL_READ:
        return _uint32s(arr[start:stop].tolist(), start)
    return _narrow(arr[start:stop], start)


def _uint32s(ids: list[Any] | tuple[Any, ...], start: int) -> bytes | memoryview:
    """``ids`` (from position ``start`` on) as canonical bytes. ``array('I', ids)`` checks
    every id exactly (OverflowError outside ``[0, 2**32)``, TypeError for a non-integer) and
    is the fastest way from Python ints: about 8 ns an id after 0.3 us."""
    try:
        converted = array.array("I", ids)
    except (OverflowError, TypeError):
        raise _bad_id(ids, start) from None
    if len(converted) <= _SMALL_READ:
        return converted.tobytes()
    return memoryview(converted).cast("B").toreadonly()


def _converter_for(typecode: str) -> _Convert:
    """The converter of an array of 1, 2 or 4-byte integers (8-byte ones: ``_open_array``)."""
    if typecode in "IL" and array.array(typecode).itemsize == TOKEN_BYTES:
        return _from_uint32_array
    return _from_int_array


_ARRAY_CONVERTERS = {typecode: _converter_for(typecode) for typecode in _INT_TYPECODES}


def _bad_id(items: Sequence[Any], start: int) -> Exception:
    """The error for the first id of ``items`` (the ids from position ``start`` on) that is
    not an integer (TypeError) or is out of range (ValueError)."""
    for pos, item in enumerate(items, start):
        if not hasattr(item, "__index__"):
            return TypeError(f"{_ID_RANGE}; element {pos} is {item!r} ({type(item).__name__})")
        if not 0 <= item.__index__() <= MAX_TOKEN_ID:
            return ValueError(f"{_ID_RANGE}; element {pos} is {item!r}")
    return ValueError(f"{_ID_RANGE}; got an unsupported sequence")  # pragma: no cover


def _narrow(arr: np.ndarray[Any, Any], start: int) -> memoryview:
    """A 1-D integer array (ids from ``start`` on) as a contiguous uint32 array, range-checked
    with one vectorised reduction (none for unsigned types of at most 32 bits). Calls the
    ufunc reductions directly: ``arr.max()`` adds a Python-level wrapper."""
    dtype = arr.dtype
    if dtype.itemsize == 8 and dtype.isnative:
        # Reinterpreted as unsigned, a negative id becomes huge: one max() checks both ends.
        bad = _max(arr.view(np.uint64)) > MAX_TOKEN_ID
    elif dtype.kind == "u" and dtype.itemsize <= TOKEN_BYTES:
        bad = False
    elif dtype.itemsize <= TOKEN_BYTES:
        bad = _min(arr) < 0
    else:  # 8-byte ids in non-native byte order
        bad = _min(arr) < 0 or _max(arr) > MAX_TOKEN_ID
    if bad:
        pos = int(np.flatnonzero((arr < 0) | (arr > MAX_TOKEN_ID))[0])
        raise ValueError(f"{_ID_RANGE}; element {start + pos} is {int(arr[pos])}")
    return _byte_view(arr.astype(np.uint32))


def _byte_view(narrowed: Any) -> memoryview:
    """A byte view of a contiguous uint32 NumPy array (a buffer; NumPy's stubs do not say so)."""
    return memoryview(narrowed).cast("B").toreadonly()

"""A step's attention work items as the native library reads them, checked once.

:class:`AttendItems` is built once per step (not per layer) and checks every index array
then: starts that partition their arrays, owners, ``sees`` and ``first`` within their
items, and the
query rows and pool slots the indices reach. Its arrays are private copies made read-only
after the check, so they cannot change afterwards; a call then only compares the tensors'
shapes with :attr:`AttendItems.query_rows` and :attr:`AttendItems.pool_slots`
(:meth:`prefixkv.kernels.ops.Kernels.attend`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

INT32_MAX = 2**31 - 1

Indices = npt.ArrayLike


class AttendItems:
    """Work items (see ``csrc/attention.c``): item ``i`` has members (query tokens)
    ``rows[member_start[i]:member_start[i + 1]]`` with ``sees`` and ``first`` alongside
    (a member sees its item's tokens ``first..sees - 1``), and tokens
    ``slot[token_start[i]:token_start[i + 1]]`` with ``owner`` alongside.

    Attributes (all read-only): the seven arrays (``owner`` int32, the rest int64);
    ``count`` items; ``max_members`` and ``max_tokens``, the most of any item;
    ``query_rows`` (largest row + 1) and ``pool_slots`` (largest slot + 1), the least a
    call's query and pool must hold (0 when there are none)."""

    __slots__ = (
        "count",
        "first",
        "max_members",
        "max_tokens",
        "member_start",
        "owner",
        "pointers",
        "pool_slots",
        "query_rows",
        "rows",
        "sees",
        "slot",
        "token_start",
    )

    def __init__(
        self,
        member_start: Indices,
        rows: Indices,
        sees: Indices,
        first: Indices,
        token_start: Indices,
        slot: Indices,
        owner: Indices,
    ) -> None:
        """Copies and checks the arrays; ValueError naming the array and the problem when
        they do not describe valid items."""
        self.member_start = _copy("member_start", member_start, np.int64)
        self.rows = _copy("rows", rows, np.int64)
        self.sees = _copy("sees", sees, np.int64)
        self.first = _copy("first", first, np.int64)
        self.token_start = _copy("token_start", token_start, np.int64)
        self.slot = _copy("slot", slot, np.int64)
        self.owner = _copy("owner", owner, np.int32)
        members = _partition("member_start", self.member_start, "rows", len(self.rows))
        tokens = _partition("token_start", self.token_start, "slot", len(self.slot))
        if len(members) != len(tokens):
            raise ValueError(f"member_start has {len(members)} items and token_start {len(tokens)}")
        self.count = len(members)
        self.max_members = int(members.max()) if self.count else 0
        self.max_tokens = int(tokens.max()) if self.count else 0
        if len({len(self.sees), len(self.first), len(self.rows)}) > 1 or len(self.owner) != len(
            self.slot
        ):
            raise ValueError(
                f"sees has {len(self.sees)} entries and first {len(self.first)} for "
                f"{len(self.rows)} rows, owner {len(self.owner)} for {len(self.slot)} slots"
            )
        if self.max_tokens > INT32_MAX or self.count > INT32_MAX:
            raise ValueError(f"{self.count} items of up to {self.max_tokens} tokens: too many")
        _within("sees", self.sees, 0, np.repeat(tokens, members))  # a prefix of its item
        _within("first", self.first, 0, self.sees)  # a suffix of that prefix
        _within("owner", self.owner, -1, np.repeat(members, tokens) - 1)  # -1 or a member
        _nonnegative("rows", self.rows)
        _nonnegative("slot", self.slot)
        self.query_rows = int(self.rows.max()) + 1 if len(self.rows) else 0
        self.pool_slots = int(self.slot.max()) + 1 if len(self.slot) else 0
        for array in self._arrays():
            array.flags.writeable = False
        self.pointers = tuple(int(a.ctypes.data) for a in self._arrays())

    def _arrays(self) -> Sequence[np.ndarray]:
        """In the order of the library's argument block (``csrc/abi.h``)."""
        return (
            self.member_start,
            self.rows,
            self.sees,
            self.first,
            self.token_start,
            self.slot,
            self.owner,
        )


def _copy(name: str, values: Indices, dtype: type[np.integer]) -> np.ndarray:
    """A fresh 1-D C-contiguous array of ``dtype`` holding ``values`` (which must be integers
    that fit it): ValueError otherwise."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name}: a 1-D array expected, got shape {array.shape}")
    if array.dtype == dtype:  # the usual case: nothing to convert, so nothing to compare
        return np.array(array, order="C", copy=True)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name}: integers expected, got {array.dtype}")
    copied = np.array(array, dtype=dtype, order="C", copy=True)
    if not np.array_equal(copied, array):
        raise ValueError(f"{name}: values outside {np.dtype(dtype).name}")
    return copied


def _partition(name: str, starts: np.ndarray, of: str, length: int) -> np.ndarray:
    """Each item's size: ``starts`` must run from 0 to ``length`` (``of``'s length) without
    decreasing."""
    if len(starts) == 0 or starts[0] != 0 or starts[-1] != length:
        raise ValueError(f"{name} must run from 0 to len({of}) = {length}")
    sizes = np.diff(starts)
    if (sizes < 0).any():
        raise ValueError(f"{name} decreases at item {int(np.argmax(sizes < 0))}")
    return sizes


def _within(name: str, values: np.ndarray, lower: int, upper: np.ndarray | int) -> None:
    """ValueError naming the first entry of ``values`` outside ``lower..upper`` (inclusive;
    ``upper`` per entry or one for all)."""
    bad = (values < lower) | (values > upper)
    if bad.any():
        at = int(np.argmax(bad))
        most = int(upper[at]) if isinstance(upper, np.ndarray) else upper
        raise ValueError(f"{name}[{at}] = {int(values[at])} is outside {lower}..{most}")


def _nonnegative(name: str, values: np.ndarray) -> None:
    """ValueError naming the first negative entry of ``values``."""
    if len(values) and values.min() < 0:
        at = int(np.argmax(values < 0))
        raise ValueError(f"{name}[{at}] = {int(values[at])} is negative")

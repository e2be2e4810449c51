"""How a :class:`~prefixkv.index.tree.PrefixIndex` keeps its block values: a strategy object
chosen once, at construction.

A node holds its blocks' values as one *run*, the store's mutable sequence type; the index
only slices runs, deletes a head or tail (``del run[:n]``, ``del run[n:]``), extends one run
with another of the same store, reverses a removed tail, iterates and takes lengths, so any
type with those operations can be a run.

* :data:`LIST_VALUES` (the default, and the executable reference): runs are lists of any
  values; a match's values are a tuple. The paged cache stores pool block ids this way.
* :data:`INT64_VALUES`: runs are ``array('q')``, 8-byte signed integers packed in place (a
  KV slot index per block, as SGLang's allocator hands them out). Slicing, deletion,
  extension and concatenation are ``memcpy``; no Python int exists per block until a caller
  reads one. A match's values are a fresh ``array('q')``, which
  ``torch.frombuffer``/``numpy.frombuffer`` can wrap without a copy.

Which values a store holds is its contract: the int64 store refuses anything but integers
in ``[-2**63, 2**63)``, with a TypeError naming ``values``, before the index changes.
"""

from __future__ import annotations

from array import array
from collections.abc import MutableSequence, Sequence
from typing import Any, Protocol

__all__ = ["INT64_VALUES", "LIST_VALUES", "Int64Values", "ListValues", "Run", "ValueStore"]

Run = MutableSequence[Any]
"""A node's values: one per block, in block order (the store's run type)."""


class ValueStore(Protocol):
    """Contract of a value store (module docstring). Stateless: one object may serve any
    number of indexes and threads."""

    name: str

    def empty(self) -> Run:
        """A new run holding nothing (a namespace root's)."""
        ...

    def adopt(self, values: Sequence[Any]) -> Run:
        """The caller's values as a run the index may read and slice. The index never
        changes the object it is given (it stores slices of it), so a value of the run type
        is returned as it is. Raises TypeError naming ``values`` for values the store
        cannot hold."""
        ...

    def matched(self, runs: Sequence[Run], used: int) -> Sequence[Any]:
        """A match's values: every value of ``runs[:-1]`` (at least one run), then the first
        ``used`` of ``runs[-1]``, in a new sequence the tree does not share (callers must
        not change it: a match is a record)."""
        ...

    def nothing(self) -> Sequence[Any]:
        """The values of a match of no block."""
        ...

    def same(self, now: Sequence[Any], then: Sequence[Any]) -> bool:
        """Whether a path's values ``now`` are still those a match saw (``then``), for
        ``pin``'s re-verification after an eviction."""
        ...


class ListValues:
    """Runs of any Python values (lists); a match's values are a tuple. Re-verification
    compares by identity: an equal but different object is another block's value."""

    name = "list"

    def empty(self) -> Run:
        return []

    def adopt(self, values: Sequence[Any]) -> Run:
        return values if type(values) is list else list(values)

    def matched(self, runs: Sequence[Run], used: int) -> Sequence[Any]:
        last = runs[-1]
        if len(runs) == 1:
            return tuple(last) if used == len(last) else tuple(last[:used])
        gathered: list[Any] = []
        for run in runs[:-1]:
            gathered += run
        gathered += last if used == len(last) else last[:used]
        return tuple(gathered)

    def nothing(self) -> Sequence[Any]:
        return ()

    def same(self, now: Sequence[Any], then: Sequence[Any]) -> bool:
        return len(now) == len(then) and all(map(_is, now, then))


class Int64Values:
    """Runs of 8-byte signed integers (``array('q')``); a match's values are a fresh
    ``array('q')``. Re-verification compares values: an integer has no identity worth
    keeping, and the same slot under the same tokens is the same KV."""

    name = "int64"

    def empty(self) -> Run:
        return array("q")

    def adopt(self, values: Sequence[Any]) -> Run:
        if type(values) is array and values.typecode == "q":
            return values
        try:
            return array("q", values)
        except (TypeError, OverflowError) as exc:
            raise TypeError(
                f"values: the int64 value store holds integers in [-2**63, 2**63) ({exc})"
            ) from exc

    def matched(self, runs: Sequence[Run], used: int) -> Sequence[Any]:
        last = runs[-1]
        if len(runs) == 1:
            return last[:used]  # (a slice of an array is a new array: a memcpy)
        gathered = array("q")
        for run in runs[:-1]:
            gathered += run  # type: ignore[arg-type]  # (runs of this store are arrays)
        gathered += last[:used] if used < len(last) else last  # type: ignore[arg-type]
        return gathered

    def nothing(self) -> Sequence[Any]:
        return array("q")

    def same(self, now: Sequence[Any], then: Sequence[Any]) -> bool:
        return now == then


LIST_VALUES = ListValues()
INT64_VALUES = Int64Values()


def _is(a: object, b: object) -> bool:
    return a is b

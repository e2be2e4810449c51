"""AttendItems: any valid set of work items is accepted with the bounds a call is checked
against; any one broken entry is refused with a ValueError naming its array."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv.kernels.items import AttendItems

Arrays = dict[str, list[int]]


@st.composite
def valid_items(draw: st.DrawFn) -> Arrays:
    """1-6 items of 0-5 members and 0-20 tokens; sees within the item, first within sees,
    owners -1 or a member of theirs."""
    arrays: Arrays = {name: [] for name in ("rows", "sees", "first", "slot", "owner")}
    arrays["member_start"], arrays["token_start"] = [0], [0]
    for _ in range(draw(st.integers(1, 6))):
        members, tokens = draw(st.integers(0, 5)), draw(st.integers(0, 20))
        arrays["rows"] += draw(st.lists(st.integers(0, 50), min_size=members, max_size=members))
        sees = draw(st.lists(st.integers(0, tokens), min_size=members, max_size=members))
        arrays["sees"] += sees
        arrays["first"] += [draw(st.integers(0, seen)) for seen in sees]
        arrays["slot"] += draw(st.lists(st.integers(0, 500), min_size=tokens, max_size=tokens))
        owners = st.integers(-1, members - 1)
        arrays["owner"] += draw(st.lists(owners, min_size=tokens, max_size=tokens))
        arrays["member_start"].append(arrays["member_start"][-1] + members)
        arrays["token_start"].append(arrays["token_start"][-1] + tokens)
    return arrays


def build(arrays: Arrays) -> AttendItems:
    return AttendItems(**arrays)  # type: ignore[arg-type]


@settings(max_examples=200, deadline=None)
@given(valid_items())
def test_valid_items_are_accepted_with_the_bounds_they_reach(arrays: Arrays) -> None:
    items = build(arrays)
    assert items.count == len(arrays["member_start"]) - 1
    assert items.query_rows == max(arrays["rows"], default=-1) + 1
    assert items.pool_slots == max(arrays["slot"], default=-1) + 1
    assert items.max_tokens == max(np.diff(arrays["token_start"]))
    assert items.max_members == max(np.diff(arrays["member_start"]))
    assert items.owner.dtype == np.int32 and items.slot.dtype == np.int64
    assert all(not a.flags.writeable for a in (items.rows, items.sees, items.slot))


def _break(arrays: Arrays, data: st.DataObject) -> str:
    """Break one entry of ``arrays`` so that they no longer describe valid items; returns
    the name of the array the error must name."""
    starts = arrays["member_start"]
    members = np.repeat(np.diff(starts), np.diff(arrays["token_start"]))
    tokens = np.repeat(np.diff(arrays["token_start"]), np.diff(starts))
    choices: list[tuple[str, int, int]] = [("member_start", 0, 1), ("token_start", 0, -1)]
    choices.append(("member_start", len(starts) - 1, starts[-1] + 1))
    choices += [("rows", i, -1) for i in range(len(arrays["rows"]))]
    choices += [("slot", i, -3) for i in range(len(arrays["slot"]))]
    choices += [("sees", i, int(tokens[i]) + 1) for i in range(len(arrays["sees"]))]
    choices += [("sees", i, -1) for i in range(len(arrays["sees"])) if arrays["first"][i] == 0]
    choices += [("first", i, arrays["sees"][i] + 1) for i in range(len(arrays["first"]))]
    choices += [("first", i, -1) for i in range(len(arrays["first"]))]
    choices += [("owner", i, int(members[i])) for i in range(len(arrays["owner"]))]
    choices += [("owner", i, -2) for i in range(len(arrays["owner"]))]
    name, at, value = data.draw(st.sampled_from(choices))
    arrays[name][at] = value
    return name


@settings(max_examples=300, deadline=None)
@given(valid_items(), st.data())
def test_one_broken_entry_is_refused_naming_its_array(arrays: Arrays, data: Any) -> None:
    name = _break(arrays, data)
    with pytest.raises(ValueError, match=f"^{name}"):
        build(arrays)


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"owner": [-1]}, "^sees has 1 entries and first 1 for 1 rows, owner 1 for 2 slots"),
        ({"sees": [2, 2]}, "^sees has 2 entries and first 1 for 1 rows"),
        ({"first": [0, 0]}, "^sees has 1 entries and first 2 for 1 rows"),
        ({"token_start": [0, 1, 2]}, "^member_start has 1 items and token_start 2"),
        ({"token_start": [0, 3]}, r"^token_start must run from 0 to len\(slot\) = 2"),
        ({"rows": [[0]]}, r"^rows: a 1-D array expected, got shape \(1, 1\)"),
        ({"slot": [0.5, 1.0]}, "^slot: integers expected, got float64"),
        ({"owner": [-1, 2**40]}, "^owner: values outside int32"),
        ({"slot": np.array([0, 2**64 - 1], dtype=np.uint64)}, "^slot: values outside int64"),
    ],
)
def test_arrays_that_do_not_fit_together_are_refused(changes: dict[str, Any], pattern: str) -> None:
    arrays: Arrays = {"member_start": [0, 1], "rows": [0], "sees": [2], "first": [0],
                      "token_start": [0, 2], "slot": [4, 5], "owner": [-1, -1]}  # fmt: skip
    build(arrays)
    with pytest.raises(ValueError, match=pattern):
        build({**arrays, **changes})


def test_decreasing_starts_are_named() -> None:
    with pytest.raises(ValueError, match=r"^member_start decreases at item 1"):
        AttendItems([0, 2, 1, 3], [0, 1, 2], [0, 0, 0], [0, 0, 0], [0, 0, 0, 0], [], [])

"""The SGLang adapter's page bookkeeping (no SGLang needed): ``page_firsts`` (its native
check, and the NumPy one used without a compiler) against a plain Python reference, on page
sizes small and large enough that a value spans several of the NumPy check's tiles of
in-page offsets."""

from __future__ import annotations

from array import array

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv.index.native import native_descent
from prefixkv.integrations.sglang_pages import (
    _TILE_SLOTS,
    _numpy_page_firsts,
    page_firsts,
    page_slots,
)

# 1: no check; 16: SGLang's usual; _TILE_SLOTS // 2 and // 4: a tile is 2 or 4 pages, so a
# few pages already cross tiles; _TILE_SLOTS * 2: a tile is one page.
PAGE_SIZES = st.sampled_from([1, 2, 16, _TILE_SLOTS // 4, _TILE_SLOTS // 2, 2 * _TILE_SLOTS])


def reference_firsts(slots: list[int], page_size: int) -> list[int] | None:
    """The first slot of each page, or None if some page's slots are not consecutive."""
    pages = [slots[i : i + page_size] for i in range(0, len(slots), page_size)]
    if any(page != list(range(page[0], page[0] + page_size)) for page in pages):
        return None
    return [page[0] for page in pages]


@st.composite
def paged_slots(draw: st.DrawFn) -> tuple[list[int], int]:
    """Whole pages of consecutive slots, sometimes with one slot changed (anywhere)."""
    page_size = draw(PAGE_SIZES)
    firsts = draw(st.lists(st.integers(0, 2**40), max_size=9 if page_size < 4096 else 5))
    slots = [first + offset for first in firsts for offset in range(page_size)]
    if slots and draw(st.booleans()):
        where = draw(st.integers(0, len(slots) - 1))
        slots[where] += draw(st.sampled_from([-1, 1, 7, -(2**20)]))
    return slots, page_size


@settings(max_examples=150, deadline=None)
@given(case=paged_slots(), dtype=st.sampled_from([torch.int64, torch.int32]))
def test_page_firsts_matches_the_reference(case: tuple[list[int], int], dtype: torch.dtype) -> None:
    slots, page_size = case
    if dtype == torch.int32:
        slots = [slot % 2**30 for slot in slots]  # (an int32 pool's slot range)
    tensor = torch.tensor(slots, dtype=dtype).reshape(-1)
    expected = reference_firsts(slots, page_size)
    if expected is None:
        with pytest.raises(ValueError, match="consecutive"):
            page_firsts(tensor, page_size)
    else:
        firsts = page_firsts(tensor, page_size)
        assert type(firsts) is array and firsts.typecode == "q"  # (the index's int64 runs)
        assert firsts.tolist() == expected
        rebuilt = page_slots(firsts, page_size, torch.device("cpu"))
        assert rebuilt.tolist() == [slot for slot in slots]


def test_page_firsts_refuses_a_partial_page() -> None:
    with pytest.raises(ValueError, match="whole pages of 16 slots"):
        page_firsts(torch.arange(20), 16)


@settings(max_examples=150, deadline=None)
@given(case=paged_slots(), shift=st.sampled_from([0, 2**63 - 2**41, -(2**63)]))
def test_the_native_and_numpy_checks_agree(case: tuple[list[int], int], shift: int) -> None:
    """Both checks give the reference's answer, also for slots near the ends of int64 (the
    differences wrap, as NumPy's do)."""
    slots, page_size = case
    wrapped = [(slot + shift + 2**63) % 2**64 - 2**63 for slot in slots]
    host = torch.tensor(wrapped, dtype=torch.int64).numpy()
    consecutive = reference_firsts(slots, page_size) is not None
    expected = [wrapped[i] for i in range(0, len(wrapped), page_size)] if consecutive else None
    for check in (native_descent().page_firsts, _numpy_page_firsts):
        if expected is None:
            with pytest.raises(ValueError, match="consecutive"):
                check(host, page_size)
        else:
            assert check(host, page_size).tolist() == expected


def test_page_firsts_reads_a_strided_tensor() -> None:
    """A strided view (a column of a two-column tensor) is read as contiguous int64s."""
    slots = torch.arange(32, dtype=torch.int64)
    column = torch.stack([slots, torch.zeros(32, dtype=torch.int64)], 1)[:, 0]
    assert column.stride() == (2,)
    assert page_firsts(column, 16).tolist() == [0, 16]
    with pytest.raises(ValueError, match="consecutive"):
        page_firsts(torch.stack([slots, slots.flip(0)], 1)[:, 1], 16)

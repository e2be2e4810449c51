"""The SGLang adapter's page bookkeeping (no SGLang needed): ``page_firsts`` against a plain
Python reference, on page sizes small and large enough that a value spans several of the
check's tiles of in-page offsets."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv.integrations.sglang_pages import _TILE_SLOTS, page_firsts, page_slots

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
        assert page_firsts(tensor, page_size) == expected
        rebuilt = page_slots(expected, page_size, torch.device("cpu"))
        assert rebuilt.tolist() == [slot for slot in slots]


def test_page_firsts_refuses_a_partial_page() -> None:
    with pytest.raises(ValueError, match="whole pages of 16 slots"):
        page_firsts(torch.arange(20), 16)

"""prefixkv.tokens: every input form, every integer typecode, errors, lazy reading."""

from __future__ import annotations

import array
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv.tokens import (
    MAX_TOKEN_ID,
    TokenBytes,
    TokenReader,
    as_token_bytes,
    token_count,
    tokens_from_bytes,
)

from .token_forms import WIDE_AND_NARROW

TYPECODES = "bBhHiIlLqQ"
# Lengths around every switch between conversion paths (96, 256, 1536 ids) and beyond.
LENGTHS = [0, 1, 15, 16, 95, 96, 97, 255, 256, 257, 1000, 1536, 1537, 5000]


def canonical(ids: list[int]) -> bytes:
    return array.array("I", ids).tobytes()


def ids_for(typecode: str, n: int) -> list[int]:
    """n ids that fit ``typecode`` (so every form can hold them), spread over its range."""
    top = min(MAX_TOKEN_ID, 2 ** (8 * array.array(typecode).itemsize - (typecode.islower())) - 1)
    return [(i * 7919) % (top + 1) for i in range(n)]


class Reiterable:
    """An iterable that is not a sequence (like a generator, but can be iterated again)."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __iter__(self) -> Any:
        return iter(self.items)


FORMS: dict[str, Callable[[list[int]], Any]] = {
    "list": list,
    "tuple": tuple,
    "generator": lambda ids: (i for i in ids),
    "array('q')": lambda ids: array.array("q", ids),
    "numpy int64": lambda ids: np.array(ids, dtype=np.int64),
    "numpy uint32": lambda ids: np.array(ids, dtype=np.uint32),
    "numpy int64 strided": lambda ids: np.array([x for i in ids for x in (i, -1)], np.int64)[::2],
    "numpy big-endian int64": lambda ids: np.array(ids, dtype=">i8"),
    "torch int64": lambda ids: torch.tensor(ids, dtype=torch.int64),
    "torch int32": lambda ids: torch.tensor(ids, dtype=torch.int32),
    "TokenBytes": lambda ids: TokenBytes(canonical(ids)),
}


# --- every accepted form gives the same bytes ------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("n", LENGTHS)
def test_every_form_gives_the_canonical_bytes(form: str, n: int) -> None:
    ids = ids_for("i", n)
    out = as_token_bytes(FORMS[form](ids))
    assert type(out) is TokenBytes
    assert out == canonical(ids) and token_count(out) == n
    assert tokens_from_bytes(out) == ids


@pytest.mark.parametrize("typecode", TYPECODES)
@pytest.mark.parametrize("n", LENGTHS)
def test_every_integer_typecode_converts(typecode: str, n: int) -> None:
    ids = ids_for(typecode, n)
    assert as_token_bytes(array.array(typecode, ids)) == canonical(ids)


@given(st.lists(st.integers(0, MAX_TOKEN_ID), max_size=300))
@settings(max_examples=200, deadline=None)
def test_random_ids_convert_identically_in_every_form(ids: list[int]) -> None:
    expected = canonical(ids)
    for form, make in FORMS.items():
        if form != "torch int32" or max(ids, default=0) < 2**31:
            assert as_token_bytes(make(ids)) == expected, form
    for typecode in "LQq":
        assert as_token_bytes(array.array(typecode, ids)) == expected


def test_token_bytes_pass_through_unconverted() -> None:
    tb = as_token_bytes([1, 2, 3])
    assert as_token_bytes(tb) is tb
    reader = TokenReader(tb, 2)
    assert reader.num_tokens == 3 and reader.view.obj is tb  # a view of it, not a copy


def test_the_input_is_never_mutated_or_kept_exported() -> None:
    arr = array.array("q", range(300))
    reader = TokenReader(arr, 16)
    reader.read_to(300)
    del reader
    arr.append(1)  # would raise BufferError if a view of it were still alive
    lst = list(range(50))
    as_token_bytes(lst)
    assert lst == list(range(50))


# --- out-of-range ids: ValueError naming the first offender ----------------------------------


@pytest.mark.parametrize("n", [4, 200, 1000])
@pytest.mark.parametrize(
    ("make", "bad"),
    [
        (list, -1),
        (list, 2**32),
        (lambda ids: array.array("q", ids), -5),
        (lambda ids: array.array("q", ids), 2**40),
        (lambda ids: array.array("Q", ids), 2**32),
        (lambda ids: array.array("l", ids), -(2**40)),
        (lambda ids: array.array("b", ids), -1),
        (lambda ids: array.array("h", ids), -300),
        (lambda ids: array.array("i", ids), -(2**31)),
        (lambda ids: np.array(ids, dtype=np.int64), -7),
        (lambda ids: np.array(ids, dtype=np.uint64), 2**33),
        (lambda ids: np.array(ids, dtype=np.int8), -2),
        (lambda ids: np.array(ids, dtype=">i8"), -3),
        (lambda ids: torch.tensor(ids, dtype=torch.int64), -9),
    ],
)
def test_out_of_range_ids_raise_value_error_naming_the_element(
    make: Callable[[list[int]], Any], bad: int, n: int
) -> None:
    ids = [3] * n
    ids[n - 2] = bad
    with pytest.raises(ValueError, match=rf"\[0, 4294967295\]; element {n - 2} is {bad}$"):
        as_token_bytes(make(ids))


# --- malformed inputs: TypeError/ValueError saying what is wrong -----------------------------


@pytest.mark.parametrize(
    ("bad", "error", "message"),
    [
        ([1, 2.5], TypeError, r"element 1 is 2\.5 \(float\)"),
        ([[1, 2]], TypeError, r"element 0 is \[1, 2\] \(list\)"),
        ([1, None], TypeError, r"element 1 is None \(NoneType\)"),
        ([1, "2"], TypeError, r"element 1 is '2' \(str\)"),
        ("abc", TypeError, "sequence of integer token ids, got str"),
        (b"abcd", TypeError, "got bytes"),
        (bytearray(4), TypeError, "got bytearray"),
        (memoryview(b"abcd"), TypeError, "got memoryview"),
        (5, TypeError, "sequence of integer token ids, got int"),
        (None, TypeError, "got NoneType"),
        (np.int64(5), TypeError, "got int64"),
        (array.array("d", [1.0]), TypeError, "array typecode 'd'"),
        (array.array("f", [1.0]), TypeError, "array typecode 'f'"),
        (array.array("u", "ab"), TypeError, "array typecode 'u'"),
        (np.array([1.0, 2.0]), TypeError, "got dtype float64"),
        (np.array([True, False]), TypeError, "got dtype bool"),
        (np.array(["a"]), TypeError, "got dtype <U1"),
        (np.zeros((2, 3), np.int64), ValueError, r"1-D, got shape \(2, 3\); pass input_ids\[0\]"),
        (np.zeros((2, 2, 2), np.int64), ValueError, r"1-D, got shape \(2, 2, 2\)$"),
        (np.array(5), ValueError, r"1-D, got shape \(\)"),
        (torch.tensor([1.0]), TypeError, "integer tensor, got dtype torch.float32"),
        (torch.tensor([True]), TypeError, "integer tensor, got dtype torch.bool"),
        (torch.zeros(1, 4, dtype=torch.long), ValueError, r"shape \(1, 4\); pass input_ids\[0\]"),
        (Reiterable([1, -1]), ValueError, "element 1 is -1"),
    ],
)
def test_malformed_inputs_raise_naming_the_problem(bad: Any, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        as_token_bytes(bad)
    with pytest.raises(error, match=message):
        TokenReader(bad, 16).read_to(100)


def test_container_errors_come_before_any_id_is_read() -> None:
    for bad in (np.zeros((2, 3)), array.array("d", [1.0] * 40), "x" * 40, torch.zeros(40)):
        with pytest.raises((TypeError, ValueError)):
            TokenReader(bad)  # head=0: reads no id, yet the container is refused


def test_bools_in_a_list_count_as_integers() -> None:
    assert as_token_bytes([True, 0]) == canonical([1, 0])


# --- the reader reads only what it is asked to ------------------------------------------------


@pytest.mark.parametrize(
    "make",
    WIDE_AND_NARROW,
)
def test_reader_validates_only_the_ids_it_reads(make: Callable[[list[int]], Any]) -> None:
    ids = list(range(1000))
    ids[500] = -1  # invalid, but only once read
    reader = TokenReader(make(ids), 16)
    assert reader.num_tokens == 1000 and bytes(reader.view) == canonical(ids[:16])
    assert bytes(reader.read_to(400)) == canonical(ids[:400])
    before = reader.view
    with pytest.raises(ValueError, match="element 500 is -1"):
        reader.read_to(600)
    assert reader.view is before  # unchanged by the failed read
    assert bytes(reader.read_to(500)) == canonical(ids[:500])


def test_reader_clamps_and_never_reads_backwards() -> None:
    reader = TokenReader([1, 2, 3], 16)
    assert bytes(reader.view) == canonical([1, 2, 3])
    assert reader.read_to(99) is reader.view and reader.read_to(1) is reader.view
    assert TokenReader([], 16).num_tokens == 0


def test_reader_views_are_read_only_bytes() -> None:
    for source in ([1, 2], array.array("q", range(300)), np.arange(300), array.array("I", [7])):
        reader = TokenReader(source, 2)
        reader.read_to(300)
        view = reader.view  # bytes while short, a read-only byte view once long
        assert type(view) is bytes or (view.readonly and view.format == "B"), source
        assert bytes(view) == as_token_bytes(source)

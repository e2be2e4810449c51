"""The native descent (``prefixkv.index.native``) against the Python one, its reference.

Random trees (page sizes 1 and 16; blocks drawn from a few patterns, so prefixes share,
split and end inside nodes; partial pages; evictions in between) are queried with
``array('q')`` ids, some of them outside ``[0, 2**32)`` (negative, ``2**32`` and beyond):
the native path must find the same nodes, use the same blocks, read (validate) exactly as
far and raise the same error as the Python path, also under a child key that collides.
Then whole indexes with and without it, and the door's argument checks. Run under the
sanitizers by ``make test-kernels-asan``.
"""

from __future__ import annotations

import array
import logging
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv.index import INT64_VALUES, LIST_VALUES, Inserted, Match, PrefixIndex, ValueStore
from prefixkv.index.native import NativeDescent, native_descent, native_descent_or_none
from prefixkv.index.node import Node
from prefixkv.tokens import TokenReader

pytestmark = pytest.mark.sanitizer  # (make test-kernels-asan runs this file sanitized)

WILD = (-1, -(2**63), 2**32, 2**32 + 7, 2**63 - 1, -(2**32) + 3)
"""Ids no uint32 label holds: each must never match, and reading one raises ValueError."""


@pytest.fixture(scope="module")
def native() -> NativeDescent:
    return native_descent()


def _first_token(block: bytes) -> Hashable:
    return block[:4]  # (not injective: siblings sharing a first token collide)


KEYS: dict[str, Callable[[bytes], Hashable] | None] = {"bytes": None, "first": _first_token}


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, list[list[int]], list[list[int]], list[int]]:
    """(page size, sequences to insert, queries, blocks to evict before each query)."""
    size = draw(st.sampled_from((1, 16)))
    patterns = draw(
        st.lists(st.lists(st.integers(0, 3), min_size=size, max_size=size), min_size=1, max_size=3)
    )

    def sequence() -> list[int]:
        picks = draw(st.lists(st.integers(0, len(patterns) - 1), max_size=14))
        tail = draw(st.lists(st.integers(0, 3), max_size=size - 1 if size > 1 else 0))
        return [token for pick in picks for token in patterns[pick]] + tail

    inserts = [sequence() for _ in range(draw(st.integers(1, 6)))]
    queries = []
    for _ in range(draw(st.integers(1, 6))):
        query = sequence()
        if query and draw(st.booleans()):  # one id no label holds, anywhere
            query[draw(st.integers(0, len(query) - 1))] = draw(st.sampled_from(WILD))
        queries.append(query)
    evictions = [draw(st.integers(0, 3)) for _ in queries]
    return size, inserts, queries, evictions


def _python_find(index: PrefixIndex, ids: array.array[int]) -> tuple[Any, ...]:
    """The Python descent's answer: match fields, path, blocks used, bytes read; or the
    error it raises."""
    try:
        reader = TokenReader(ids, index.block_size)
        match, path, used = index._find(reader, None)
    except (TypeError, ValueError) as exc:
        return (type(exc), str(exc))
    return (match.num_tokens, match.values, path, used, bytes(reader.view))


def _native_find(
    index: PrefixIndex, native: NativeDescent, ids: array.array[int]
) -> tuple[Any, ...]:
    try:
        root = index._roots.get(None)
        path, used, read = native.find(root, ids, index.block_size, index._native_key)
        match = index._find_native(native, ids, None)[0]
    except (TypeError, ValueError) as exc:
        return (type(exc), str(exc))
    return (match.num_tokens, match.values, path, used, read)


@pytest.mark.parametrize("key", KEYS)
@settings(max_examples=150, deadline=None)
@given(case=scenarios())
def test_the_native_descent_finds_what_the_python_one_finds(
    native: NativeDescent, key: str, case: tuple[int, list[list[int]], list[list[int]], list[int]]
) -> None:
    size, inserts, queries, evictions = case
    chosen = KEYS[key]
    index = PrefixIndex(size) if chosen is None else PrefixIndex(size, child_key=chosen)
    for number, tokens in enumerate(inserts):
        index.insert(tokens, [(number, block) for block in range(len(tokens) // size)])
    for query, evict in zip(queries, evictions, strict=True):
        index.evict(evict)
        ids = array.array("q", query)
        expected, found = _python_find(index, ids), _native_find(index, native, ids)
        assert found == expected
        if len(found) == 5:
            assert all(a is b for a, b in zip(found[2], expected[2], strict=True))
            assert not set(query[: found[0]]) & set(WILD)  # (never part of a match)


@pytest.mark.parametrize("store", [LIST_VALUES, INT64_VALUES], ids=lambda store: store.name)
@settings(max_examples=60, deadline=None)
@given(case=scenarios(), namespace=st.sampled_from([None, "tenant"]))
def test_indexes_with_and_without_the_native_descent_agree(
    native: NativeDescent,
    store: ValueStore,
    case: tuple[int, list[list[int]], list[list[int]], list[int]],
    namespace: str | None,
) -> None:
    """Every public answer (matches, peeks, inserts' rejects and matches, stats) is the same
    through the native descent as through the Python one, errors included, with either value
    store (the native descent reads a node's list or ``array('q')`` of values)."""
    size, inserts, queries, evictions = case
    plain, fast = PrefixIndex(size, values=store), PrefixIndex(size, native=native, values=store)

    def both(name: str, *args: Any) -> None:
        """``name`` called on both indexes with ``args``: the same answer or error."""
        answers = []
        for index in (plain, fast):
            try:
                answers.append(_answer(getattr(index, name)(*args)))
            except (TypeError, ValueError) as exc:
                answers.append((type(exc), str(exc)))
        assert answers[0] == answers[1]

    for number, tokens in enumerate(inserts + queries):
        ids = array.array("q", tokens)
        values = [number * 1000 + block for block in range(len(tokens) // size)]
        both("peek", ids, namespace)
        both("match", ids, namespace)
        both("insert_with_match", ids, values, namespace)
    for query, evict in zip(queries, evictions, strict=True):
        both("evict", evict)
        both("match", array.array("q", query), namespace)
    assert plain.stats() == fast.stats()
    fast.check_invariants()


def _answer(found: Any) -> Any:
    """What a test compares of an index's answer (a Match's handle names its own index)."""
    if isinstance(found, Match):
        return found[:3]
    if isinstance(found, Inserted):
        return (found.rejected, found.match[:3])
    return found


def test_a_pinned_native_match_is_reverified_from_the_bytes_it_read(native: NativeDescent) -> None:
    """A match's handle keeps the canonical bytes the native descent read: after an eviction
    elsewhere, pinning it re-verifies its path from them."""
    index = PrefixIndex(2, native=native)
    index.insert(array.array("q", [1, 2, 3, 4]), ["a", "b"])
    index.insert(array.array("q", [7, 8]), ["c"])
    match = index.match(array.array("q", [1, 2, 3, 4, 5]))
    assert match.values == ("a", "b")
    index.match(array.array("q", [1, 2]))  # (the other leaf is now the least recent)
    assert index.evict(1) == ["c"]
    index.pin(match)
    assert index.pinned_blocks == 2 and index.evict(5) == []
    index.unpin(match)


@pytest.mark.parametrize(
    ("ids", "error"),
    [
        (array.array("i", [1, 2]), "format 'q' or 'l'"),
        (array.array("Q", [1, 2]), "format 'q' or 'l'"),
        (memoryview(array.array("q", [1, 2, 3, 4])).cast("B").cast("q", (2, 2)), "2 dimensions"),
        (memoryview(array.array("q", range(8)))[::2], "C-contiguous"),
        ([1, 2], "C-contiguous buffer"),
        (b"12345678", "format 'q' or 'l'"),
    ],
)
def test_the_door_refuses_ids_that_are_not_8_byte_signed_ints(
    native: NativeDescent, ids: Any, error: str
) -> None:
    with pytest.raises(TypeError, match=error):
        native.find(None, ids, 2, None)
    with pytest.raises(TypeError, match=error):
        native.read(ids, 2)
    with pytest.raises(TypeError, match=error):
        native.page_firsts(ids, 2)


def test_the_door_checks_nodes_block_sizes_and_keys(native: NativeDescent) -> None:
    index = PrefixIndex(2)
    index.insert([1, 2, 3, 4], ["a", "b"])
    root = index._roots[None]
    ids = array.array("q", [1, 2, 3, 4])
    with pytest.raises(ValueError, match="block_size"):
        native.find(root, ids, 0, None)
    with pytest.raises(TypeError, match="key"):
        native.find(root, ids, 2, "not callable")  # type: ignore[arg-type]
    (child,) = root.children.values()
    child.label += b"\0\0\0\0"  # a label one token longer than its blocks
    with pytest.raises(ValueError, match="a label of 20 bytes for 2 blocks of 2 tokens"):
        native.find(root, ids, 2, None)
    del child.label[-4:]
    values = child.values
    for wrong_values in (tuple(values), type("L", (list,), {})(values), bytearray(2)):
        child.values = wrong_values  # type: ignore[assignment]  # (not a run of a store)
        with pytest.raises(TypeError, match=r"values a list or an array\.array"):
            native.find(root, ids, 2, None)
    child.values = array.array("q", [7, 8])  # (an int64 store's run: read as any run)
    assert native.find(root, ids, 2, None)[:2] == ([child], 2)
    child.values = values
    stranger = Node(None, None, bytearray(8), ["x"], 0, [])
    impostor = type("Impostor", (Node,), {})(None, None, bytearray(8), ["x"], 0, [])
    for wrong, message in ((object(), "expected Node"), (impostor, "got Impostor")):
        root.children[next(iter(root.children))] = wrong  # type: ignore[assignment]
        with pytest.raises(TypeError, match=message):
            native.find(root, ids, 2, None)
    root.children[next(iter(root.children))] = stranger
    assert native.find(root, ids, 2, None)[:2] == ([], 0)  # (its label differs: no match)


def test_read_names_the_first_id_outside_the_range(native: NativeDescent) -> None:
    ids = array.array("q", [5, 2**32 - 1, -4, 2**40])
    assert native.read(ids, 2) == array.array("I", [5, 2**32 - 1]).tobytes()
    with pytest.raises(ValueError, match=r"element 2 is -4$"):
        native.read(ids, 99)
    with pytest.raises(ValueError, match="stop"):
        native.read(ids, -1)


def test_without_a_compiler_the_index_falls_back_with_one_log_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with caplog.at_level(logging.WARNING, logger="prefixkv.index"):
        assert native_descent_or_none.__wrapped__(tmp_path) is None
    (line,) = caplog.messages
    assert "native descent unavailable, using Python's" in line and "is not a command" in line
    assert "\n" not in line

"""Block names: a namespace's part is its values, never a class name or repr."""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prefixkv.cache.tenants import Namespace
from prefixkv.tiers.naming import BlockNamer, namespace_key

FINGERPRINT = bytes(range(16))
values = st.recursive(
    st.none() | st.text(max_size=8) | st.binary(max_size=8) | st.integers(),
    lambda inner: st.tuples(inner, inner),
    max_leaves=6,
)


class Renamed(NamedTuple):
    """A class like Namespace under another name: must name blocks differently only if it
    is not a Namespace (it is a plain tuple of the same values)."""

    tenant: Any
    salt: Any = None


@given(values, values, values, values)
def test_keys_are_equal_exactly_when_the_values_are(a: Any, b: Any, c: Any, d: Any) -> None:
    # No bools are drawn: True == 1 name alike, as they hash alike in the index.
    assert (namespace_key(Namespace(a, b)) == namespace_key(Namespace(c, d))) == ((a, b) == (c, d))
    assert (namespace_key((a, b)) == namespace_key((c, d))) == ((a, b) == (c, d))


def test_the_key_does_not_depend_on_the_class_name_or_repr() -> None:
    # The encoding is fixed: this is the name of Namespace("tenant-a", "salt") in every
    # version; a class renamed or given another repr cannot change it.
    assert namespace_key(Namespace("tenant-a", "salt")) == (
        b"N" + (9).to_bytes(8, "little") + b"stenant-a" + (5).to_bytes(8, "little") + b"ssalt"
    )
    assert namespace_key(None) == b""
    # A tuple of the same values is another namespace than the Namespace.
    assert namespace_key(Renamed("tenant-a", "salt")) != namespace_key(
        Namespace("tenant-a", "salt")
    )


def test_namespaces_name_blocks_apart() -> None:
    namer = BlockNamer(FINGERPRINT, 4)
    tokens = bytes(range(64))
    roots = {namer.root(ns) for ns in (None, Namespace("a"), Namespace("a", "x"), Namespace("b"))}
    assert len(roots) == 4
    assert namer.names(tokens, Namespace("a"), 2) != namer.names(tokens, Namespace("b"), 2)


def test_an_unnameable_namespace_is_refused_naming_its_type() -> None:
    with pytest.raises(TypeError, match="got object"):
        namespace_key(object())
    with pytest.raises(TypeError, match="got float"):
        namespace_key(Namespace("a", 1.5))

"""Guarantee: namespaces isolate tenants in the index. A prefix inserted in one namespace is
never matched from another (the default namespace included), and each namespace keeps its
own values for the same tokens."""

from __future__ import annotations

from prefixkv import PrefixIndex


def test_namespaces_isolate_the_index() -> None:
    index = PrefixIndex(4)
    tokens = list(range(16))
    index.insert(tokens, ["a0", "a1", "a2", "a3"], namespace="tenant-a")
    assert index.match(tokens, namespace="tenant-b").num_tokens == 0
    assert index.match(tokens).num_tokens == 0  # the default namespace is a namespace too
    index.insert(tokens, ["b0", "b1"], namespace="tenant-b")
    assert index.match(tokens, namespace="tenant-a").values == ("a0", "a1", "a2", "a3")
    assert index.match(tokens, namespace="tenant-b").values == ("b0", "b1")

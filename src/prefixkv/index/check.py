"""Full consistency check of a :class:`~prefixkv.index.tree.PrefixIndex` (tests and debugging).

Walks every node once: O(total blocks). Raises ``AssertionError`` naming what broke.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import TYPE_CHECKING, Any

from prefixkv.index.node import Node

if TYPE_CHECKING:
    from prefixkv.index.tree import PrefixIndex


def _fail(what: str) -> None:
    raise AssertionError(f"PrefixIndex invariant broken: {what}")


def check_index(index: PrefixIndex) -> None:
    """Check structure, use records, pins, counters and the eviction queue of ``index``."""
    # Not thread-safe by itself: PrefixIndex.check_invariants holds the index lock.
    blocks = nodes = pinned = 0
    expected_pins: Counter[int] = Counter()
    for _, ends in index._held.values():
        for end in ends:
            node = end
            while node is not None and node.parent is not None:
                expected_pins[id(node)] += 1
                node = node.parent
    seen_values: set[Any] = set()
    evictable_leaves = set()
    for namespace, root in index._roots.items():
        if root.parent is not None or root.key != namespace or root.values or root.label:
            _fail(f"root of namespace {namespace!r} is malformed")
        if not root.children:
            _fail(f"namespace {namespace!r} has an empty root (it should have been removed)")
        stack = [root]
        while stack:
            node = stack.pop()
            for key, child in node.children.items():
                _check_node(index, node, key, child)
                nodes += 1
                blocks += len(child.values)
                if child.pin_count:
                    pinned += len(child.values)
                elif not child.children:
                    evictable_leaves.add(child)
                if child.pin_count != expected_pins[id(child)]:
                    _fail(
                        f"{child} has pin_count {child.pin_count}, held pins say {expected_pins[id(child)]}"
                    )
                for value in child.values:
                    tag = _value_tag(value)
                    if tag in seen_values:
                        _fail(f"value {value!r} is indexed twice")
                    seen_values.add(tag)
                stack.append(child)
    if blocks != index._num_blocks:
        _fail(f"counted {blocks} blocks, index says {index._num_blocks}")
    if nodes != index._num_nodes:
        _fail(f"counted {nodes} nodes, index says {index._num_nodes}")
    if pinned != index._pinned_blocks:
        _fail(f"counted {pinned} pinned blocks, index says {index._pinned_blocks}")
    if set(index._queue) != evictable_leaves:
        _fail("the eviction queue does not hold exactly the unpinned leaves")
    index._queue.check()


def _check_node(index: PrefixIndex, parent: Node, key: object, node: Node) -> None:
    bb = index._block_token_bytes
    if node.parent is not parent or not node.attached:
        _fail(f"{node} is not linked to its parent")
    if not node.values or len(node.label) != len(node.values) * bb:
        _fail(f"{node} has {len(node.label)} label bytes for {len(node.values)} blocks")
    if key != node.key or key != index._child_key(bytes(node.label[:bb])):
        _fail(f"{node} is filed under a key that is not its first block's")
    if node.depth != parent.depth + len(parent.values):
        _fail(f"{node} has depth {node.depth}, parent ends at {parent.depth + len(parent.values)}")
    if node.pin_count < sum(c.pin_count for c in node.children.values()):
        _fail(f"{node} has fewer pins than its children")
    regions = node.regions
    if not regions or regions[-1].end != len(node.values):
        _fail(f"{node} regions {regions} do not cover its blocks")
    for prev, cur in itertools.pairwise(regions):
        if not prev.end < cur.end or cur.hits > prev.hits or cur.tick > prev.tick:
            _fail(f"{node} regions {regions} are not monotone")
        if (cur.hits, cur.tick) == (prev.hits, prev.tick):
            _fail(f"{node} regions {regions} are not merged")
    if regions[-1].hits < 1 or regions[0].tick > index._tick:
        _fail(f"{node} regions {regions} hold impossible use records")
    if parent.regions and (
        parent.regions[-1].hits < regions[0].hits or parent.regions[-1].tick < regions[0].tick
    ):
        _fail(f"{node} was used more recently or more often than its parent")


def _value_tag(value: Any) -> Any:
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))
    return ("value", value)

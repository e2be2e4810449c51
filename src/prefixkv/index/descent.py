"""Finding the longest indexed path for a query, reading the query as the descent needs.

Pure functions over :class:`~prefixkv.index.node.Node` trees; :class:`PrefixIndex` calls them
under its lock. Blocks are compared as bytes (``memcmp``): ``label.startswith(part, offset)``
with zero-copy views of the query.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from prefixkv.index.node import Node
from prefixkv.tokens import TOKEN_BYTES, TokenReader


def descend(
    child: Node, reader: TokenReader, end: int, bb: int, key: Callable[[bytes], Hashable]
) -> tuple[list[Node], int]:
    """From ``child``, filed at the root under the query's first block: the nodes on the
    longest verified path for the query's first ``end`` bytes, and the blocks used in the
    last one. ``bb`` is the bytes of a block, ``key`` the index's child key.

    Reads ``reader`` as :mod:`prefixkv.index.tree` documents: past a node's first block only
    once that block matched, then to the node's end or twice what has been read (whichever
    is more), never past ``end``. Mutates nothing but ``reader``.
    """
    query = reader.view
    path: list[Node] = []
    pos = used = 0
    while True:
        label = child.label
        stop = pos + len(label)
        if len(query) < min(stop, end):
            if not label.startswith(query[pos : pos + bb]):  # a key collision: stop here
                return path, used
            query = reader.read_to(min(end, max(stop, 2 * len(query))) // TOKEN_BYTES)
        if stop <= end and label.startswith(query[pos:stop]):  # (same length: equal)
            path.append(child)
            used = len(child.values)
            if stop == end:
                return path, used
            pos = stop
            if len(query) < pos + bb:
                query = reader.read_to(min(end, max(pos + bb, 2 * len(query))) // TOKEN_BYTES)
            below = child.children.get(key(bytes(query[pos : pos + bb])))
            if below is None:
                return path, used
            child = below
            continue
        if stop <= end:  # some block of the label differs
            common = equal_blocks(label, query, pos, len(child.values), bb)
        else:  # the query ends inside this node
            common = common_blocks(label, query, pos, end, bb)
        if common:
            path.append(child)
            return path, common
        return path, used


def common_blocks(label: bytearray, query: bytes | memoryview, pos: int, end: int, bb: int) -> int:
    """Number of leading whole blocks of ``label`` equal to ``query[pos:end]``. O(len) bytes in
    C (``memcmp``, no copies) plus O(log blocks) Python steps."""
    num = min(len(label), end - pos) // bb
    if label.startswith(query[pos : pos + num * bb]):
        return num
    return equal_blocks(label, query, pos, num, bb)


def equal_blocks(label: bytearray, query: bytes | memoryview, pos: int, num: int, bb: int) -> int:
    """Number of leading blocks of ``label`` equal to ``query`` from ``pos``, given that some
    block among the first ``num`` differs.

    Binary search over blocks; each probe ``memcmp``s only the not-yet-verified middle range
    (``label.startswith(part, offset)``, zero-copy views), so the total work is O(num) bytes in
    C plus O(log num) Python steps.
    """
    lo, hi = 0, num - 1  # blocks [0, lo) are known equal; at most hi blocks are
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if label.startswith(query[pos + lo * bb : pos + mid * bb], lo * bb):
            lo = mid
        else:
            hi = mid - 1
    return lo

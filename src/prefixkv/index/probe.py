"""Where a query leaves the cached blocks of one namespace: read-only, for explanations.

A :class:`~prefixkv.index.records.Match` says how many whole blocks are cached; a
:class:`Probe` also says what the namespace caches *after* them (if anything), how many
tokens of the query that continuation still shares, and the continuation's first tokens, so
a caller can show the prompt and the cache side by side at the first differing token.

:func:`nearest_continuation` runs under the index's lock over the node where the match
ended: the rest of that node's label, or else each child's first block (the root's, for a
query whose first block is not cached). Cost: O(children) 4-byte comparisons of first
tokens, and one NumPy comparison of at most a block for each child sharing the first token.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np

from prefixkv.tokens import TOKEN_BYTES


class Probe(NamedTuple):
    """One namespace's view of a query (token counts, not bytes)."""

    matched_blocks: int
    """Leading whole blocks of the query cached in the namespace."""
    common_tokens: int
    """Leading tokens of the query equal to cached tokens: the matched blocks, plus the
    tokens of the next block (or the query's partial tail) that the nearest cached
    continuation shares. The first differing token is at this position."""
    continues: bool
    """The namespace caches at least one block right after the matched ones."""
    cached_next: bytes
    """Canonical token bytes of the nearest continuation, from the block after the matched
    ones (at most the probe's window; empty when nothing continues)."""


def common_tokens(a: bytes | memoryview, b: bytes | memoryview) -> int:
    """Leading token ids (4-byte units) equal in ``a`` and ``b``. O(min length) in NumPy."""
    n = min(len(a), len(b)) // TOKEN_BYTES
    if n == 0:
        return 0
    x = np.frombuffer(a, dtype=np.uint32, count=n)
    y = np.frombuffer(b, dtype=np.uint32, count=n)
    differ = np.flatnonzero(x != y)
    return int(differ[0]) if differ.size else n


def nearest_continuation(
    candidates: Iterable[bytes], query_next: bytes | memoryview
) -> tuple[int, bytes]:
    """Among ``candidates`` (the first bytes of each cached continuation, from the block
    after the match), the one sharing the most leading tokens with ``query_next`` (the
    query from that block on, at most one block): those tokens and the candidate. ``(0,
    b"")`` when there is no candidate; the first candidate when none shares a token."""
    best, best_label = 0, b""
    first = bytes(query_next[:TOKEN_BYTES])
    for i, label in enumerate(candidates):
        if i == 0:
            best_label = label
        if len(first) == TOKEN_BYTES and label[:TOKEN_BYTES] == first:
            shared = common_tokens(label, query_next)
            if shared > best:
                best, best_label = shared, label
    return best, best_label

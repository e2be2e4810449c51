"""Pins: counted holds on a match's blocks (a running sequence reads them), so that neither
``evict`` nor ``discard`` removes them, for :class:`~prefixkv.index.tree.PrefixIndex`.

A pin is held per Match object (by identity); ``pin`` re-verifies a path whose blocks were
evicted since the match was made (the index's epoch moved) and raises StaleMatchError if it
no longer holds them.
"""

from __future__ import annotations

from prefixkv.index.node import Node
from prefixkv.index.records import Match, MatchHandle, StaleMatchError
from prefixkv.index.removal import Removal
from prefixkv.tokens import TokenBytes, TokenReader


class Pinning(Removal):
    """The pins of the index (see :class:`~prefixkv.index.tree.PrefixIndex`)."""

    def pin(self, match: Match) -> None:
        """Pin the blocks of ``match`` (counted: every pin needs its own unpin).

        Raises ValueError for a match from another index and StaleMatchError if some of its
        blocks were evicted (or replaced) since it was made.
        """
        handle = self._own(match)
        blocks = len(match.values)  # (match.num_blocks, without a property call)
        with self._lock:
            end: Node | None = None
            if blocks:
                end = self._resolve(match, handle, blocks)
                if end.depth + len(end.values) > blocks:
                    end = self._split(end, blocks - end.depth)
                node: Node | None = end
                while node is not None and node.parent is not None:
                    if node.pin_count == 0:
                        self._pinned_blocks += len(node.values)
                        self._queue.discard(node)
                    node.pin_count += 1
                    node = node.parent
            self._held.setdefault(id(match), (match, []))[1].append(end)

    def unpin(self, match: Match) -> None:
        """Undo one ``pin(match)``. Raises ValueError if ``match`` is not pinned."""
        self._own(match)
        with self._lock:
            held = self._held.get(id(match))
            if held is None or held[0] is not match:
                raise ValueError("unpin() of a match that is not pinned")
            ends = held[1]
            node = ends.pop()
            if not ends:
                del self._held[id(match)]
            while node is not None and node.parent is not None:
                node.pin_count -= 1
                if node.pin_count == 0:
                    self._pinned_blocks -= len(node.values)
                    if not node.children:
                        self._queue.update(node)
                node = node.parent

    def _own(self, match: Match) -> MatchHandle:
        if type(match) is not Match and not isinstance(match, Match):  # (the common case first)
            raise TypeError(f"expected a Match, got {type(match).__name__}")
        if match.handle.owner is not self:
            raise ValueError("this match was made by another PrefixIndex")
        return match.handle

    def _resolve(self, match: Match, handle: MatchHandle, blocks: int) -> Node:
        """The node now holding the match's last block, verified to still hold its blocks."""
        node = handle.node
        if handle.epoch != self._epoch:  # blocks were evicted since: verify the whole path
            matched = TokenBytes(handle.query[: blocks * self._block_token_bytes])
            now, path, _ = self._find(TokenReader(matched), match.namespace)
            if now.num_blocks != blocks or not self._store.same(now.values, match.values):
                raise StaleMatchError("blocks of this match were evicted since it was made")
            node = path[-1]
        assert node is not None
        while node.depth >= blocks:
            assert node.parent is not None
            node = node.parent
        return node

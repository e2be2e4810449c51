"""Pinned prefixes: cached blocks a tenant asked to keep resident for a while
(``POST /v1/cache/pin``), and the limits that keep pins from starving anyone.

A pin holds an index pin on a cached prefix (pinned blocks are never evicted, see
:mod:`prefixkv.index`) until its deadline passes or it is unpinned. Limits, checked before a
pin is taken, so the pool's bound and every other tenant's room survive any pins:

- a tenant's pinned blocks stay within its share of the pool (``--tenant-share``; without
  shares, within the pinnable part below);
- all pins together hold at most ``PINNABLE_FRACTION`` of the pool, so running requests of
  every tenant always find room (their KV lives in the same pool).

Expiry is lazy: the cache calls :meth:`PinBook.expired` whenever it looks for room or
reports (``reserve``/``store``/``grow``, stats, a new pin), so an expired pin never holds a
block anyone asks for. Not thread-safe: the cache calls it under its lock.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from prefixkv.index.records import Match
from prefixkv.index.tree import PrefixIndex

PINNABLE_FRACTION = 0.5
"""The most of the pool all pins together may hold."""


class PinRefused(Exception):
    """A pin the limits do not allow, or nothing to pin; ``code`` says which (an API error
    code), the message says why with the figures."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class PrefixPin:
    """A pin as its owner sees it."""

    id: str
    tenant: Hashable
    tokens: int
    """Tokens pinned (whole blocks)."""
    blocks: int
    expires: float
    """Deadline on the book's clock (``time.monotonic`` by default)."""


@dataclass(frozen=True)
class _Held:
    pin: PrefixPin
    index: PrefixIndex
    match: Match


class PinBook:
    """The live pins of one cache, by id."""

    def __init__(self, total_blocks: int, quota: int | None, clock: Callable[[], float]) -> None:
        """``quota``: a tenant's share of the pool in blocks (None without shares)."""
        self.clock = clock
        self.pinnable = math.floor(PINNABLE_FRACTION * total_blocks)
        self.quota = quota
        self._held: dict[str, _Held] = {}
        self._soonest = math.inf  # the earliest deadline held: expire() is O(1) until then

    def add(
        self, index: PrefixIndex, match: Match, tenant: Hashable, ttl_seconds: float
    ) -> PrefixPin:
        """Pin ``match`` (cached blocks of ``index``) for ``tenant`` until ``ttl_seconds``
        from now; PinRefused naming the limit it would break, or for an empty match."""
        blocks = match.num_blocks
        if blocks == 0:
            raise PinRefused(
                "nothing to pin: the prompt has no full block cached", "nothing_cached"
            )
        mine = self.blocks_of(tenant)
        limit, which = self.pinnable, "the pinnable part of the pool"
        if self.quota is not None and self.quota < self.pinnable:
            limit, which = self.quota, "its share of the pool (--tenant-share)"
        if mine + blocks > limit:
            raise PinRefused(
                f"pinning {blocks} blocks would put this tenant at {mine + blocks} pinned "
                f"blocks, over {which} ({limit} blocks)",
                "pin_over_share",
            )
        total = self.total_blocks
        if total + blocks > self.pinnable:
            raise PinRefused(
                f"pinning {blocks} blocks would put all pins at {total + blocks} blocks, over "
                f"the pinnable part of the pool ({self.pinnable} blocks): running requests "
                "need the rest",
                "pin_limit",
            )
        index.pin(match)
        pin = PrefixPin(
            secrets.token_hex(8), tenant, match.num_tokens, blocks, self.clock() + ttl_seconds
        )
        self._held[pin.id] = _Held(pin, index, match)
        self._soonest = min(self._soonest, pin.expires)
        return pin

    def remove(self, pin_id: str, tenant: Hashable) -> PrefixPin | None:
        """Unpin ``tenant``'s pin ``pin_id``; None when it has no such pin (never another
        tenant's: ids are not capabilities across tenants)."""
        held = self._held.get(pin_id)
        if held is None or held.pin.tenant != tenant:
            return None
        del self._held[pin_id]
        held.index.unpin(held.match)
        self._soonest = min((h.pin.expires for h in self._held.values()), default=math.inf)
        return held.pin

    def expire(self) -> int:
        """Unpin every pin past its deadline; how many. O(1) before the earliest deadline,
        O(pins) when one is due (it runs on every look for room)."""
        now = self.clock()
        if now < self._soonest:
            return 0
        due = [pin_id for pin_id, held in self._held.items() if held.pin.expires <= now]
        for pin_id in due:
            held = self._held.pop(pin_id)
            held.index.unpin(held.match)
        self._soonest = min((h.pin.expires for h in self._held.values()), default=math.inf)
        return len(due)

    def blocks_of(self, tenant: Hashable) -> int:
        return sum(h.pin.blocks for h in self._held.values() if h.pin.tenant == tenant)

    @property
    def total_blocks(self) -> int:
        return sum(h.pin.blocks for h in self._held.values())

    def __len__(self) -> int:
        return len(self._held)

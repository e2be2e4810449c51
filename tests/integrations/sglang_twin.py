"""Two SGLang radix caches driven in lockstep: SGLang's own ``RadixCache`` and prefixkv's
adapter, each with its own fake allocator (it records the slots freed) and request-to-token
pool, fed the same KV slots, so every observable can be compared after every step.

SGLang missing: the tests using :func:`load` skip, unless ``PREFIXKV_REQUIRE_SGLANG=1`` (set by
``.ci/run``), then they fail saying how to install it.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Any

import torch

from ..requirements import missing

INSTALL = "pip install --no-deps sglang==0.5.23 msgspec==0.22.0 dill==0.4.1"
ROW = 1024  # request-to-token row length: longer than any generated sequence


def load() -> Any:
    """The adapter module (it imports SGLang); skips or fails the test without SGLang."""
    try:
        import prefixkv.integrations.sglang as adapter
    except ImportError as exc:
        missing("PREFIXKV_REQUIRE_SGLANG", f"SGLang not importable ({INSTALL}): {exc}")
    return adapter


class RecordingAllocator:
    """What the caches use of SGLang's token-to-KV allocator: ``device``, ``page_size`` and
    ``free_segment``, which records the slots freed (the observable of an eviction)."""

    def __init__(self, page_size: int) -> None:
        self.device = torch.device("cpu")
        self.page_size = page_size
        self.freed: list[int] = []

    def free_segment(self, free_index: torch.Tensor, *, start_pos: int) -> None:
        assert start_pos % self.page_size == 0, "segment start is not page-aligned"
        self.freed.extend(int(s) for s in free_index.tolist())

    def take_freed(self) -> list[int]:
        freed, self.freed = self.freed, []
        return freed


class TokenPool:
    """SGLang's ``ReqToTokenPool`` as the caches use it: a row of slots per request."""

    def __init__(self, rows: int) -> None:
        self.req_to_token = torch.zeros((rows, ROW), dtype=torch.int64)

    def write(self, where: tuple[int, slice], values: torch.Tensor) -> None:
        self.req_to_token[where] = values


@dataclass
class KvInfo:
    req_pool_idx: int
    cache_protected_len: int = 0
    cache_inserted_len: int = 0
    swa_evict_floor: int = 0


@dataclass
class FakeReq:
    """The attributes ``checkpoint`` reads and writes of SGLang's ``Req``."""

    full_untruncated_fill_ids: array[int]
    kv: KvInfo
    origin_input_ids: list[int]
    extra_key: str | None = None
    cache_salt: str | None = None
    priority: int = 0
    lock: Any = None
    last_node: Any = None
    prefix_len: int = 0


@dataclass
class Side:
    """One cache with its allocator and pool."""

    cache: Any
    allocator: RecordingAllocator
    pool: TokenPool
    reqs: dict[int, FakeReq] = field(default_factory=dict)


def make_side(cache_class: Any, params_class: Any, page_size: int, rows: int) -> Side:
    allocator = RecordingAllocator(page_size)
    pool = TokenPool(rows)
    params = params_class(
        disable=False,
        req_to_token_pool=pool,
        token_to_kv_pool_allocator=allocator,
        page_size=page_size,
        enable_kv_cache_events=True,
    )
    return Side(cache_class(params), allocator, pool)


def normalized_events(events: list[Any]) -> list[tuple[Any, ...]]:
    """Events as comparable tuples; a run of removals as one set (SGLang removes a node's
    pages head first, the index a leaf's pages tail first: the same pages either way)."""
    out: list[tuple[Any, ...]] = []
    for event in events:
        kind = type(event).__name__
        if kind == "BlockStored":
            out.append(
                (
                    kind,
                    tuple(event.block_hashes),
                    event.parent_block_hash,
                    tuple(event.token_ids),
                    event.block_size,
                )
            )
        elif kind == "BlockRemoved":
            if out and out[-1][0] == kind:
                out[-1] = (kind, out[-1][1] | frozenset(event.block_hashes))
            else:
                out.append((kind, frozenset(event.block_hashes)))
        else:
            out.append((kind,))
    return out

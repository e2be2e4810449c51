"""Preallocated, recycled KV buffers for requests, and the cache layer that writes into them.

transformers' ``DynamicLayer`` grows by ``torch.cat``: every decode step copies the whole KV,
and every new tensor of a long prompt is fresh memory that page-faults on first touch. A
request here instead gets one buffer sized for its prompt plus ``max_tokens``; the cached
prefix is gathered straight into it, prefill and decode append in place, and the buffer goes
back to a small free list for the next request, already faulted in.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from prefixkv.cache.layout import KVLayout

GRANULE = 256
"""Buffer capacities are rounded up to this many tokens (a multiple of any block size we use)."""
DEFAULT_MAX_IDLE_BYTES = 256 << 20
"""Idle buffers kept warm between requests, at most (see WorkspacePool)."""


class WorkspaceLayer(DynamicLayer):  # type: ignore[no-untyped-call]
    """A full-attention cache layer over fixed buffers ``[1, heads, capacity, dim]``."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._key_buf, self._value_buf = keys, values
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self._set_length(length)

    def _set_length(self, length: int) -> None:
        self.length = length
        self.keys = self._key_buf[:, :, :length]
        self.values = self._value_buf[:, :, :length]

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        return None  # the buffers exist from the start

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``[1, heads, new, dim]`` states in place; return the views so far."""
        end = self.length + key_states.shape[-2]
        if end > self._key_buf.shape[-2]:
            raise RuntimeError(f"KV workspace full: {end} tokens > {self._key_buf.shape[-2]}")
        self._key_buf[:, :, self.length : end].copy_(key_states)
        self._value_buf[:, :, self.length : end].copy_(value_states)
        self._set_length(end)
        assert self.keys is not None and self.values is not None
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative count of tokens to remove")
        self._set_length(max(0, self.length + tokens_to_remove))


class Workspace:
    """One request's KV buffer: ``data`` is ``[layers, 2, heads, capacity, dim]``."""

    def __init__(self, layout: KVLayout, capacity: int, device: torch.device) -> None:
        self.capacity = capacity
        self.data = torch.empty(
            (layout.num_layers, 2, layout.num_kv_heads, capacity, layout.head_dim),
            dtype=layout.dtype,
            device=device,
        )

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def as_cache(self, config: Any, length: int) -> DynamicCache:
        """A DynamicCache whose layers read and append to this buffer, holding ``length``
        tokens already (the caller wrote them into ``data``). Every layer is a full one,
        sliding layers too: transformers' sliding mask, over absolute positions, applies
        their window (:mod:`prefixkv.engine.kvbridge`)."""
        cache = DynamicCache()
        cache.layers = [
            WorkspaceLayer(self.data[i, 0][None], self.data[i, 1][None], length)
            for i in range(self.data.shape[0])
        ]
        return cache

    def kv(self, num_tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Views ``[heads, num_tokens, dim]`` per layer, for storing into a prefix cache."""
        return [
            (self.data[i, 0, :, :num_tokens], self.data[i, 1, :, :num_tokens])
            for i in range(self.data.shape[0])
        ]


class WorkspacePool:
    """Recycles workspaces. Thread-safe. Between requests it keeps at most ``max_idle``
    buffers of at most ``max_idle_bytes`` together (largest dropped first), so the memory
    idle after a long request is bounded: an 8K-token SmolLM2 request's buffer (377 MB in
    fp32) is freed when it ends, while short requests keep reusing warm ones."""

    def __init__(
        self,
        layout: KVLayout,
        device: torch.device,
        max_idle: int = 2,
        max_idle_bytes: int = DEFAULT_MAX_IDLE_BYTES,
    ) -> None:
        self.layout = layout
        self.device = device
        self.max_idle = max_idle
        self.max_idle_bytes = max_idle_bytes
        self._idle: list[Workspace] = []
        self._lock = threading.Lock()

    @property
    def idle_bytes(self) -> int:
        with self._lock:
            return sum(w.nbytes for w in self._idle)

    def acquire(self, tokens: int) -> Workspace:
        """A workspace holding at least ``tokens`` tokens (the smallest idle one that fits)."""
        with self._lock:
            fits = [w for w in self._idle if w.capacity >= tokens]
            if fits:
                best = min(fits, key=lambda w: w.capacity)
                self._idle.remove(best)
                return best
        capacity = -(-tokens // GRANULE) * GRANULE
        return Workspace(self.layout, capacity, self.device)

    def release(self, workspace: Workspace) -> None:
        with self._lock:
            self._idle.append(workspace)
            self._idle.sort(key=lambda w: w.capacity)
            while self._idle and (
                len(self._idle) > self.max_idle
                or sum(w.nbytes for w in self._idle) > self.max_idle_bytes
            ):
                self._idle.pop()  # the largest

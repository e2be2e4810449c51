"""Lease: the longest cached prefix of a prompt, pinned until released."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable

import torch

from prefixkv.cache.layout import KVLayout


class Lease:
    """The longest cached prefix of a prompt, pinned until released.

    Reading copies KV out of the cache, so the caller owns what it reads and may hand it to a
    model that grows it: ``copy_to(out)`` writes into a buffer the caller already has (no
    allocation), ``kv`` returns new tensors. Release with ``release()`` or a ``with`` block
    (idempotent, thread-safe); reading after release raises RuntimeError.
    """

    __slots__ = ("_lock", "_read", "_release", "device", "layout", "namespace", "num_tokens")

    def __init__(
        self,
        num_tokens: int,
        namespace: Hashable,
        layout: KVLayout,
        device: torch.device,
        read: Callable[[torch.Tensor], None],
        release: Callable[[], None],
    ) -> None:
        self.num_tokens = num_tokens
        self.namespace = namespace
        self.layout = layout
        self.device = device
        self._read = read
        self._release: Callable[[], None] | None = release
        self._lock = threading.Lock()

    @property
    def released(self) -> bool:
        return self._release is None

    def copy_to(self, out: torch.Tensor) -> None:
        """Write the cached KV into ``out[:, :, :, :num_tokens]``.

        ``out``: ``[num_layers, 2, num_kv_heads, T >= num_tokens, head_dim]`` (2 = keys,
        values) with the cache's dtype and device. Fastest when ``out`` is contiguous and T is
        a multiple of the block size. Raises ValueError on a mismatched buffer.
        """
        lay = self.layout
        expected = (lay.num_layers, 2, lay.num_kv_heads, lay.head_dim)
        shape = tuple(out.shape)
        if len(shape) != 5 or shape[:3] + shape[4:] != expected or shape[3] < self.num_tokens:
            raise ValueError(
                f"out has shape {shape}; expected [{lay.num_layers}, 2, {lay.num_kv_heads}, "
                f">= {self.num_tokens}, {lay.head_dim}]"
            )
        if out.dtype != lay.dtype or out.device != self.device:
            raise ValueError(
                f"out is {out.dtype} on {out.device}; the cache holds {lay.dtype} on {self.device}"
            )
        if self.released:
            raise RuntimeError("this lease was released; its blocks may be gone")
        if self.num_tokens:
            self._read(out)

    @property
    def kv(self) -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
        """New tensors: one ``(keys, values)`` pair of ``[num_kv_heads, num_tokens,
        head_dim]`` per layer. Each access copies again."""
        lay = self.layout
        data = torch.empty(
            (lay.num_layers, 2, lay.num_kv_heads, self.num_tokens, lay.head_dim),
            dtype=lay.dtype,
            device=self.device,
        )
        self.copy_to(data)
        return tuple((data[layer, 0], data[layer, 1]) for layer in range(lay.num_layers))

    def release(self) -> None:
        """Unpin the blocks. Later calls do nothing."""
        with self._lock:
            release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        state = "released" if self.released else "held"
        return f"Lease(num_tokens={self.num_tokens}, namespace={self.namespace!r}, {state})"

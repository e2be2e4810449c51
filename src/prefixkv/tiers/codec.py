"""Block codecs: how a block's KV becomes a record's payload and back.

A block is ``[layers, 2, kv_heads, block_size, head_dim]`` in the cache's dtype (2 = keys,
values). ``RawCodec`` stores it bit for bit (restores are exact). Lossy codecs (see
:mod:`prefixkv.tiers.quantize`) trade exactness for bytes and are off by default.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from prefixkv.cache.layout import KVLayout


class BlockCodec(Protocol):
    """Encodes blocks of one layout. Stateless; thread-safe."""

    id: int
    """Stored in each record's header; a record is decoded by the codec of its id."""
    name: str
    """``none``, ``int8``, ``int4``: the ``--tier-compression`` value."""

    def encode(self, block: torch.Tensor) -> bytes:
        """``block``: ``[layers, 2, kv_heads, block_size, head_dim]``, the layout's dtype."""
        ...

    def payload_bytes(self, layout: KVLayout, block_size: int) -> int:
        """Bytes of one block's payload (scales included): a pure function of the layout."""
        ...

    def decode(self, payload: memoryview, layout: KVLayout, block_size: int) -> torch.Tensor:
        """The block back, ``[layers, 2, kv_heads, block_size, head_dim]`` in the layout's
        dtype on the CPU. Raises ValueError if ``payload`` has the wrong size."""
        ...

    def decode_into(self, payload: memoryview, out: torch.Tensor) -> None:
        """Write the block into ``out`` (``[layers, 2, kv_heads, block_size, head_dim]``,
        any strides with the last one 1, any device; e.g. a pool block): what a restore
        calls, to copy as little as it can. The payload's size must have been checked
        against ``payload_bytes``."""
        ...


def block_shape(layout: KVLayout, block_size: int) -> tuple[int, int, int, int, int]:
    return (layout.num_layers, 2, layout.num_kv_heads, block_size, layout.head_dim)


class RawCodec:
    """The block's bytes as they are: exact, ``layout.block_bytes(block_size)`` bytes."""

    id = 0
    name = "none"

    def payload_bytes(self, layout: KVLayout, block_size: int) -> int:
        return layout.block_bytes(block_size)

    def encode(self, block: torch.Tensor) -> bytes:
        return bytes(block.contiguous().view(-1).view(torch.uint8).numpy().data)

    def decode_into(self, payload: memoryview, out: torch.Tensor) -> None:
        """One strided copy from the record's bytes into ``out``: torch's (faster) from a
        writable buffer (disk reads), NumPy's from a read-only one (Redis replies), which
        torch would have to copy first."""
        if out.device.type != "cpu":
            layout = KVLayout(out.shape[0], out.shape[2], out.shape[4], out.dtype)
            out.copy_(self.decode(payload, layout, out.shape[3]))
            return
        dest = out.view(torch.uint8)  # [layers, 2, heads, block, dim * itemsize]
        if payload.readonly:
            array = dest.numpy()
            np.copyto(array, np.frombuffer(payload, dtype=np.uint8).reshape(array.shape))
        else:
            dest.copy_(torch.frombuffer(payload, dtype=torch.uint8).view(dest.shape))

    def decode(self, payload: memoryview, layout: KVLayout, block_size: int) -> torch.Tensor:
        expected = layout.block_bytes(block_size)
        if len(payload) != expected:
            raise ValueError(f"a raw block has {expected} bytes, got {len(payload)}")
        if payload.readonly:
            payload = memoryview(bytearray(payload))  # torch.frombuffer wants a writable one
        flat = torch.frombuffer(payload, dtype=torch.uint8)
        return flat.view(layout.dtype).view(block_shape(layout, block_size))

"""BlockPool: a fixed set of KV blocks in one preallocated tensor, and their free list.

Storage: ``[num_layers, 2, num_kv_heads, num_blocks, block_size, head_dim]`` (2 = keys,
values). With blocks on dim 3, gathering any list of blocks for all layers is one
``index_select`` whose result is already laid out as ``[layers, 2, heads, tokens, dim]``.

The pool owns tensors and free slots; it knows nothing of tokens. Not thread-safe by itself:
:class:`~prefixkv.cache.paged.PrefixKVCache` serializes every call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch

from prefixkv.cache.layout import GeometryOwner, KVGeometry


class BlockPool(GeometryOwner):
    """``num_blocks`` blocks of ``geometry.block_size`` tokens, allocated once, never
    resized."""

    def __init__(self, geometry: KVGeometry, num_blocks: int, device: torch.device) -> None:
        if num_blocks < 1:
            raise ValueError("a BlockPool needs at least one block")
        self.geometry = geometry
        layout, block_size = geometry.layout, geometry.block_size
        self.num_blocks = num_blocks
        self.device = device
        # torch.empty: pages of a large CPU allocation are committed only when first written.
        self.data = torch.empty(
            (layout.num_layers, 2, layout.num_kv_heads, num_blocks, block_size, layout.head_dim),
            dtype=layout.dtype,
            device=device,
        )
        # LIFO: recently freed (already touched) pages are reused first.
        self._free: list[int] = list(range(num_blocks - 1, -1, -1))
        self._is_free = bytearray(b"\x01") * num_blocks

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def allocate(self, count: int) -> list[int]:
        """Take up to ``count`` free blocks (fewer if the pool runs out), in ascending order
        when the free list allows: consecutive ids are one contiguous run of KV, which
        attention reads in place as a single view. O(count)."""
        taken = self._free[len(self._free) - min(count, len(self._free)) :]
        del self._free[len(self._free) - len(taken) :]
        taken.reverse()
        for block in taken:
            self._is_free[block] = 0
        return taken

    def free(self, blocks: Iterable[int]) -> None:
        """Return blocks to the free list (highest id first, so that allocating them again
        yields ascending runs). Raises ValueError on a double free."""
        for block in sorted(blocks, reverse=True):
            if self._is_free[block]:
                raise ValueError(f"block {block} freed twice")
            self._is_free[block] = 1
            self._free.append(block)

    def write(
        self,
        blocks: Sequence[int],
        kv: Sequence[tuple[torch.Tensor, torch.Tensor]],
        first_token: int,
    ) -> None:
        """Copy tokens ``[first_token, first_token + len(blocks) * block_size)`` of ``kv``
        (pairs of ``[heads, seq, dim]``) into ``blocks``."""
        if not blocks:
            return
        ids = torch.tensor(blocks, dtype=torch.long, device=self.device)
        stop = first_token + len(blocks) * self.block_size
        heads, dim = self.layout.num_kv_heads, self.layout.head_dim
        for layer, pair in enumerate(kv):
            for side, tensor in enumerate(pair):
                src = tensor[:, first_token:stop].reshape(heads, len(blocks), self.block_size, dim)
                self.data[layer, side].index_copy_(1, ids, src)

    def read_blocks(self, blocks: Sequence[int]) -> torch.Tensor:
        """A copy of ``blocks``: ``[layers, 2, heads, len(blocks), block_size, dim]``."""
        ids = torch.tensor(blocks, dtype=torch.long, device=self.device)
        return self.data.index_select(3, ids)

    def fill_blocks(
        self, blocks: Sequence[int], fills: Sequence[Callable[[torch.Tensor], None]]
    ) -> None:
        """Call ``fills[i]`` with block ``blocks[i]``'s view (``[layers, 2, heads,
        block_size, dim]``, strided) to write its KV in place."""
        for block, fill in zip(blocks, fills, strict=False):
            fill(self.data[:, :, :, block])

    def gather_into(self, blocks: Sequence[int], out: torch.Tensor) -> None:
        """Copy ``blocks`` into ``out[:, :, :, :len(blocks) * block_size]``, where ``out`` is
        ``[layers, 2, heads, T, dim]``. One ``index_select`` straight into ``out`` when it is
        contiguous and T is a multiple of the block size; else through a temporary."""
        ids = torch.tensor(blocks, dtype=torch.long, device=self.device)
        layers, _, heads, total, dim = out.shape
        size = self.block_size
        if out.is_contiguous() and total % size == 0:
            paged = out.view(layers, 2, heads, total // size, size, dim)[:, :, :, : len(blocks)]
            torch.index_select(self.data, 3, ids, out=paged)
            return
        gathered = self.data.index_select(3, ids)  # [layers, 2, heads, n, block_size, dim]
        out[:, :, :, : len(blocks) * size].copy_(gathered.view(layers, 2, heads, -1, dim))

    def check(self, in_use: Iterable[int]) -> None:
        """Raise AssertionError unless free blocks and ``in_use`` partition the pool."""
        used = list(in_use)
        if len(set(self._free)) != len(self._free):
            raise AssertionError("BlockPool: the free list holds a block twice")
        if set(used) & set(self._free):
            raise AssertionError("BlockPool: a block is both free and in use")
        if len(used) + len(self._free) != self.num_blocks:
            raise AssertionError(
                f"BlockPool: {len(used)} in use + {len(self._free)} free != {self.num_blocks} blocks"
            )
        if sum(self._is_free) != len(self._free):
            raise AssertionError("BlockPool: free flags disagree with the free list")

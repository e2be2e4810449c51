"""The ``native`` decode kernel: every decoding sequence of a step in one C call per layer.

The PyTorch kernel (:mod:`.cascade`) spends most of a 16-sequence decode step's attention in
per-op overhead: about 11 small ops per layer for each group, ~35 ms a step on SmolLM2 here,
of which the matmuls are ~10 ms. ``native_decode.c`` does the same arithmetic in one call:
the step is planned once into work items (below), and each layer hands the items, the
query and the pool layer to the library, which runs them on PyTorch's threads.

An item is a group's shared context read once for up to ``lanes // groups`` members (16
float32 lanes: five SmolLM2 sequences of three query heads per kv head), followed by each
member's own tokens, flagged with the member that sees them. A group with more members is
split into items of that many; a sequence sharing nothing is an item of one.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from prefixkv.engine.batch.cascade import partition
from prefixkv.engine.batch.native_build import NativeUnavailable, load

if TYPE_CHECKING:
    from prefixkv.engine.batch.attention import SeqSpan


@dataclass(frozen=True)
class NativeKernel:
    """The ``native`` decode kernel (see :mod:`.decode`) for ``groups`` query heads per kv head."""

    library: ctypes.CDLL
    groups: int
    name = "native"

    @staticmethod
    def create(groups: int, dtype: torch.dtype, device: torch.device) -> NativeKernel:
        """Raises NativeUnavailable where the kernel cannot run: not float32 on the CPU,
        more query heads per kv head than its lanes, or no library (see
        :func:`.native_build.load`)."""
        if device.type != "cpu" or dtype != torch.float32:
            raise NativeUnavailable(
                f"the native kernel runs float32 on the CPU, not {dtype} on {device}"
            )
        library = load()
        lanes = int(library.prefixkv_lanes())
        if groups > lanes:
            raise NativeUnavailable(
                f"the native kernel holds {lanes} query heads per kv head, the model has {groups}"
            )
        return NativeKernel(library, groups)

    def plan(
        self, spans: Seq[SeqSpan], device: torch.device
    ) -> tuple[NativePlan, tuple[SeqSpan, ...]]:
        found, alone = partition([s for s in spans if s.count == 1])
        per_item = int(self.library.prefixkv_lanes()) // self.groups
        rows: list[int] = []
        slots: list[np.ndarray] = []
        owners: list[np.ndarray] = []
        member_start, token_start = [0], [0]
        for runs, members in [*found, *[(s.runs, [s]) for s in alone]]:
            shared = _slots(runs)
            for first in range(0, len(members), per_item):
                chunk = members[first : first + per_item]
                slots.append(shared)
                owners.append(np.full(len(shared), -1, dtype=np.int32))
                for index, member in enumerate(chunk):
                    own = _slots(member.runs)[len(shared) :]
                    slots.append(own)
                    owners.append(np.full(len(own), index, dtype=np.int32))
                    rows.append(member.start)
                member_start.append(len(rows))
                token_start.append(token_start[-1] + sum(len(s) for s in slots[-len(chunk) - 1 :]))
        others = tuple(s for s in spans if s.count != 1)
        return NativePlan.of(self.library, member_start, rows, token_start, slots, owners), others


def _slots(runs: tuple[tuple[int, int], ...]) -> np.ndarray:
    if not runs:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([np.arange(a, a + c, dtype=np.int64) for a, c in runs])


@dataclass(frozen=True)
class NativePlan:
    """One step's work items (a DecodePlan), as the arrays the library reads."""

    library: ctypes.CDLL
    member_start: np.ndarray  # [items + 1] int64: item i's members are rows[member_start[i]:...]
    rows: np.ndarray  # [members] int64: each member's query row in the step
    token_start: np.ndarray  # [items + 1] int64: item i's tokens are slot[token_start[i]:...]
    slot: np.ndarray  # [tokens] int64: pool slot of each token
    owner: np.ndarray  # [tokens] int32: -1 (every member of the item sees it) or a member index
    max_tokens: int

    @staticmethod
    def of(
        library: ctypes.CDLL,
        member_start: list[int],
        rows: list[int],
        token_start: list[int],
        slots: list[np.ndarray],
        owners: list[np.ndarray],
    ) -> NativePlan:
        starts = np.asarray(token_start, dtype=np.int64)
        return NativePlan(
            library,
            np.asarray(member_start, dtype=np.int64),
            np.asarray(rows, dtype=np.int64),
            starts,
            np.concatenate(slots) if slots else np.zeros(0, dtype=np.int64),
            np.concatenate(owners) if owners else np.zeros(0, dtype=np.int32),
            int(np.diff(starts).max()) if len(starts) > 1 else 0,
        )

    def attend(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        out: torch.Tensor,
        scale: float,
    ) -> None:
        items = len(self.member_start) - 1
        if items == 0:
            return
        if query.stride(-1) != 1:
            query = query.contiguous()
        heads, _, dim = query.shape
        kv_heads = keys.shape[0]
        # the library reads [kv_heads, slots, dim] with unit strides below the kv head
        assert keys.stride()[1:] == (dim, 1) and values.stride() == keys.stride()
        assert out.is_contiguous() and out.dtype == query.dtype == keys.dtype == torch.float32
        status = self.library.prefixkv_decode(
            query.data_ptr(), query.stride(0), query.stride(1),
            keys.data_ptr(), values.data_ptr(), keys.stride(0),
            out.data_ptr(), heads, kv_heads, dim, scale,
            items, self.member_start.ctypes.data, self.rows.ctypes.data,
            self.token_start.ctypes.data, self.slot.ctypes.data, self.owner.ctypes.data,
            self.max_tokens, torch.get_num_threads(),
        )  # fmt: skip
        if status != 0:
            raise MemoryError("the native decode kernel could not allocate its scratch memory")

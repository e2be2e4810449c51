"""The ``native`` attention kernel: a whole step, decoding and prefill, in one C call per layer.

The PyTorch kernel (:mod:`.cascade`) spent most of a 16-sequence decode step's attention in
per-op overhead (~11 small ops per group and layer, ~35 ms a step on SmolLM2 here, of which
the matmuls were ~10 ms), and SDPA ran prefill chunks at ~90 GFLOP/s over a full mask.
``native_attention.c`` does the arithmetic in one call: the step is planned once into work
items (below), and each layer hands the items, the query and the pool layer to the library,
which runs them on PyTorch's threads.

An item holds up to ``lanes // groups`` query tokens (16 float32 lanes: five SmolLM2 tokens
of three query heads per kv head) and the context slots they read, each token seeing a
prefix of them (``sees``):

- decoding sequences: a group's shared context once, then each member's own tokens, flagged
  with the member that sees them; a group with more members is split into several items, a
  sequence sharing nothing is an item of one;
- a prefill chunk: consecutive queries, over the context up to the last of them; each sees
  the tokens up to its own position (causal, no mask tensor).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence as Seq
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from prefixkv.engine.batch.cascade import partition, slots_of
from prefixkv.engine.native_build import NativeUnavailable, load

if TYPE_CHECKING:
    from prefixkv.engine.batch.attention import SeqSpan


@dataclass(frozen=True)
class NativeKernel:
    """The ``native`` attention kernel (see :mod:`.kernels`)."""

    library: ctypes.CDLL
    per_item: int  # query tokens per work item: the library's lanes // query heads per kv head
    name = "native"

    @staticmethod
    def create(groups: int, dtype: torch.dtype, device: torch.device) -> NativeKernel:
        """Raises NativeUnavailable where the kernel cannot run: not float32 on the CPU,
        more query heads per kv head than its lanes, or no library (see
        :func:`prefixkv.engine.native_build.load`)."""
        if device.type != "cpu" or dtype != torch.float32:
            raise NativeUnavailable(
                f"the native attention kernel runs float32 on the CPU, not {dtype} on {device}"
            )
        library = load()
        lanes = int(library.prefixkv_lanes())
        if groups > lanes:
            raise NativeUnavailable(
                f"the native kernel holds {lanes} query heads per kv head, the model has {groups}"
            )
        return NativeKernel(library, lanes // groups)

    def plan(
        self, spans: Seq[SeqSpan], device: torch.device
    ) -> tuple[NativePlan, tuple[SeqSpan, ...]]:
        found, alone = partition([s for s in spans if s.count == 1])
        items = _Items(self.per_item)
        for runs, members in [*found, *[(s.runs, [s]) for s in alone]]:
            items.add_group(runs, members)
        for span in spans:
            if span.count > 1:
                items.add_prefill(span)
        return items.plan(self.library), ()


class _Items:
    """Work items under construction (see the module docstring), as flat lists."""

    def __init__(self, per_item: int) -> None:
        self.per_item = per_item
        self.rows: list[int] = []
        self.sees: list[int] = []
        self.slots: list[np.ndarray] = []
        self.owners: list[np.ndarray] = []
        self.member_start, self.token_start = [0], [0]

    def _close(self, tokens: int) -> None:
        self.member_start.append(len(self.rows))
        self.token_start.append(self.token_start[-1] + tokens)

    def add_group(self, runs: tuple[tuple[int, int], ...], members: list[SeqSpan]) -> None:
        """Decoding sequences whose contexts start with ``runs``: the runs once per item,
        then each member's own tokens."""
        shared = slots_of(runs)
        for first in range(0, len(members), self.per_item):
            chunk = members[first : first + self.per_item]
            own = [slots_of(m.runs)[len(shared) :] for m in chunk]
            tokens = len(shared) + sum(len(o) for o in own)
            self.slots += [shared, *own]
            self.owners.append(np.full(len(shared), -1, dtype=np.int32))
            self.owners += [np.full(len(o), i, dtype=np.int32) for i, o in enumerate(own)]
            self.rows += [m.start for m in chunk]
            self.sees += [tokens] * len(chunk)
            self._close(tokens)

    def add_prefill(self, span: SeqSpan) -> None:
        """A prefill chunk: items of consecutive queries, each over the context up to its
        last query; query j sees the tokens up to its own position (causal)."""
        context = slots_of(span.runs)
        before = span.context - span.count
        for first in range(0, span.count, self.per_item):
            size = min(self.per_item, span.count - first)
            tokens = before + first + size
            self.slots.append(context[:tokens])
            self.owners.append(np.full(tokens, -1, dtype=np.int32))
            self.rows += range(span.start + first, span.start + first + size)
            self.sees += range(before + first + 1, tokens + 1)
            self._close(tokens)

    def plan(self, library: ctypes.CDLL) -> NativePlan:
        starts = np.asarray(self.token_start, dtype=np.int64)
        return NativePlan(
            library,
            np.asarray(self.member_start, dtype=np.int64),
            np.asarray(self.rows, dtype=np.int64),
            np.asarray(self.sees, dtype=np.int64),
            starts,
            np.concatenate(self.slots) if self.slots else np.zeros(0, dtype=np.int64),
            np.concatenate(self.owners) if self.owners else np.zeros(0, dtype=np.int32),
            int(np.diff(starts).max()) if len(starts) > 1 else 0,
        )


@dataclass(frozen=True)
class NativePlan:
    """One step's work items (a AttentionPlan), as the arrays the library reads."""

    library: ctypes.CDLL
    member_start: np.ndarray  # [items + 1] int64: item i's members are rows[member_start[i]:...]
    rows: np.ndarray  # [members] int64: each member's query row in the step
    sees: np.ndarray  # [members] int64: how many of its item's tokens (from the first) it sees
    token_start: np.ndarray  # [items + 1] int64: item i's tokens are slot[token_start[i]:...]
    slot: np.ndarray  # [tokens] int64: pool slot of each token
    owner: np.ndarray  # [tokens] int32: -1 (every member of the item sees it) or a member index
    max_tokens: int

    def store(
        self,
        keys: torch.Tensor,
        values: torch.Tensor,
        new_keys: torch.Tensor,
        new_values: torch.Tensor,
        slots: torch.Tensor,
    ) -> None:
        # one C call instead of two index_copy_ (~25 us each for a 16-token decode step)
        kv_heads, tokens, dim = new_keys.shape
        assert keys.stride()[1:] == (dim, 1) and values.stride() == keys.stride()
        assert new_keys.stride(2) == new_values.stride(2) == 1 and slots.is_contiguous()
        assert keys.dtype == new_keys.dtype == new_values.dtype == torch.float32
        assert slots.dtype == torch.int64 and slots.shape == (tokens,)
        self.library.prefixkv_store(
            keys.data_ptr(), values.data_ptr(), keys.stride(0),
            new_keys.data_ptr(), new_keys.stride(0), new_keys.stride(1),
            new_values.data_ptr(), new_values.stride(0), new_values.stride(1),
            kv_heads, dim, tokens, slots.data_ptr(),
        )  # fmt: skip

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
        status = self.library.prefixkv_attend(
            query.data_ptr(), query.stride(0), query.stride(1),
            keys.data_ptr(), values.data_ptr(), keys.stride(0),
            out.data_ptr(), heads, kv_heads, dim, scale,
            items, self.member_start.ctypes.data, self.rows.ctypes.data, self.sees.ctypes.data,
            self.token_start.ctypes.data, self.slot.ctypes.data, self.owner.ctypes.data,
            self.max_tokens, torch.get_num_threads(),
        )  # fmt: skip
        if status != 0:
            raise MemoryError("the native attention kernel could not allocate its scratch memory")

"""What the scheduler tells the worker each step: which vLLM blocks to fill from the
tiers, which to write to them. Plain frozen records (pickled to the worker process)."""

from __future__ import annotations

from dataclasses import dataclass

from prefixkv.tokens import TOKEN_BYTES


@dataclass(frozen=True)
class BlockRun:
    """Consecutive full blocks of one request's prompt: block ``i`` of the run is the
    prompt's block ``first + i``, stored under ``names[i]`` (its parent: ``names[i - 1]``,
    or ``parent`` for the first) and held by vLLM in block ``block_ids[i]``."""

    request_id: str
    first: int
    parent: bytes
    names: tuple[bytes, ...]
    tokens: bytes
    """The run's token ids, canonical uint32 bytes, ``block_size`` per block."""
    block_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.names) != len(self.block_ids) or not self.names:
            raise ValueError(f"a run has as many names as blocks, at least one: {self!r}")
        if len(self.tokens) % (len(self.names) * TOKEN_BYTES):
            raise ValueError("a run's tokens are whole blocks")

    def block_tokens(self, i: int) -> bytes:
        """The token bytes of block ``i`` of the run."""
        size = len(self.tokens) // len(self.names)
        return self.tokens[i * size : (i + 1) * size]

    def parent_of(self, i: int) -> bytes:
        return self.parent if i == 0 else self.names[i - 1]


@dataclass(frozen=True)
class StepPlan:
    """Loads run before the step's forward pass; saves after it."""

    loads: tuple[BlockRun, ...]
    saves: tuple[BlockRun, ...]

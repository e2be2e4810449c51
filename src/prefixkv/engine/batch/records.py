"""The batch runner's records: its limits, and what each step did."""

from __future__ import annotations

from dataclasses import dataclass

from prefixkv.engine.batch.policy import FCFS, AdmissionPolicy


@dataclass(frozen=True)
class BatchLimits:
    """``max_running`` sequences at once; ``max_batch_tokens`` tokens per forward pass."""

    max_running: int = 64
    max_batch_tokens: int = 512
    policy: AdmissionPolicy = FCFS

    def __post_init__(self) -> None:
        for name in ("max_running", "max_batch_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class StepReport:
    """What one step did (for metrics)."""

    sequences: int
    tokens: int
    sampled: int
    """Tokens generated (one per sequence that reached its last known token)."""
    seconds: float
    running: int
    waiting: int
    preempted: int


DEFAULT_LIMITS = BatchLimits()

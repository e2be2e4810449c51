"""The batch runner's model pass: how one step's packed tokens become logits.

Three passes, one contract (:class:`ModelPass`), chosen once when the runner is built
(:func:`model_pass`):

- :class:`TransformersPass`: the model's own modules (transformers' decoder layers, the
  native swaps inside them), attention through :mod:`.attention`'s paged interface. Any
  model the runner serves.
- :class:`~prefixkv.engine.batch.lean.LeanPass`: the same arithmetic as a loop over the
  native kernels, without transformers' per-layer glue (module calls, views, ~20 small
  rotary ops a layer). Only where every layer is covered (see :mod:`.lean`); its logits are
  bit-identical to :class:`TransformersPass`'s for every step
  (tests/engine/batch/test_lean.py), so the model fingerprint does not name it.
- :class:`~prefixkv.engine.batch.decoder.DecoderPass`: the lean pass's layers in one native
  call a step, bit-identical to it (tests/engine/batch/test_decoder.py); where every
  projection is one native linear layer. Chosen over the lean pass wherever it covers.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Protocol

import torch

from prefixkv.engine.batch import attention

if TYPE_CHECKING:
    from prefixkv.engine.batch.attention import StepLayout
    from prefixkv.engine.batch.kernels import AttentionKernel

log = logging.getLogger("prefixkv.engine")


class ModelPass(Protocol):
    """One forward pass of a step over the model, writing the step's KV into the pool."""

    name: str

    def __call__(
        self, input_ids: torch.Tensor, positions: torch.Tensor, pool: torch.Tensor,
        step: StepLayout, keep: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        """``input_ids``/``positions``: ``[1, T]`` int64, the packed tokens and their
        positions; ``pool``: the KV pool ``[layers, 2, kv_heads, blocks, block_size, dim]``,
        into whose ``step.slots`` the step's keys and values are written (all it mutates);
        ``keep``: ``[K]`` int64 rows whose logits are wanted. Returns ``[K, vocab]`` float32
        logits. Runs under the model's lock, in inference mode."""
        ...


class TransformersPass:
    """The model's own forward, with the runner's paged attention active."""

    name = "transformers"

    def __init__(self, model: Any, lock: threading.RLock | threading.Lock) -> None:
        self.model, self.lock = model, lock

    def __call__(
        self, input_ids: torch.Tensor, positions: torch.Tensor, pool: torch.Tensor,
        step: StepLayout, keep: torch.Tensor,
    ) -> torch.Tensor:  # fmt: skip
        kv = attention.PagedKV(pool, step)
        with self.lock, torch.inference_mode(), attention.active(self.model):
            out = self.model(
                input_ids=input_ids,
                position_ids=positions,
                past_key_values=kv,
                use_cache=True,
                logits_to_keep=keep,
                step=step,
            )
        logits: torch.Tensor = out.logits[0].float()
        return logits


def model_pass(engine: Any, kernel: AttentionKernel) -> ModelPass:
    """The decoder pass where it covers ``engine``'s model run with ``kernel``, else the lean
    pass where it covers it, else :class:`TransformersPass` (logged: which, and what the
    faster ones do not cover)."""
    from prefixkv.engine.batch.decoder import DecoderPass
    from prefixkv.engine.batch.lean import LeanPass, NotCovered

    try:
        lean = LeanPass.of(engine.model, kernel, engine.model_lock)
    except NotCovered as why:
        log.info("batch model pass: transformers' modules (lean pass: %s)", why)
        return TransformersPass(engine.model, engine.model_lock)
    try:
        decoder = DecoderPass.of(lean)
    except NotCovered as why:
        log.info("batch model pass: lean (%d layers over the native kernels; decoder pass: "
                 "%s)", len(lean.layers), why)  # fmt: skip
        return lean
    log.info("batch model pass: decoder (%d layers in one native call)", len(lean.layers))
    return decoder

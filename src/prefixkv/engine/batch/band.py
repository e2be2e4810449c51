"""Attention of a layer the kernels do not cover: a sliding window, or capped logits.

A layer whose attention module asks more than plain causal attention, a sliding window
(Mistral, Qwen2, Phi-3, Gemma 2 and 3's local layers) or a logit cap (Gemma 2's
``attn_logit_softcapping``, every layer), is attended through the kernel's band plan
(:meth:`.kernels.AttentionKernel.plan_band`; the native kernel's windows and caps in C), and
what that plan leaves (every sequence, under the torch kernel) is attended here, sequence by
sequence, with PyTorch ops.

Windows follow transformers' masks (``masking_utils.sliding_window_overlay``): the query at
absolute position ``p`` sees the keys at positions ``p - window < k <= p``, so ``window``
tokens including itself. The pool keeps every token of every layer (docs/decisions.md,
"Sliding-window layers keep every block"), so a sequence's context is all there and a
sliding layer reads only the part its queries see: a decoding token its last ``window``
tokens, a prefill chunk from ``window - 1`` tokens before its first query. A cap follows
Gemma's eager attention: ``softcap * tanh(scores / softcap)`` on the scaled scores, then
the mask, then a float32 softmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from prefixkv.engine.batch.attention import SeqSpan


@dataclass(frozen=True)
class Band:
    """What one layer's attention asks beyond plain causal attention."""

    window: int | None
    """A query at position ``p`` sees keys at ``p - window < k <= p``; None: every key up
    to ``p`` (a full-attention layer with capped logits)."""
    softcap: float | None
    """Scaled scores become ``softcap * tanh(scores / softcap)``; None: left as they are."""

    def first_seen(self, span: SeqSpan) -> int:
        """The position of the first context token any of ``span``'s queries sees."""
        if self.window is None:
            return 0
        return max(0, span.context - span.count - self.window + 1)

    def mask(self, span: SeqSpan, groups: int, like: torch.Tensor) -> torch.Tensor:
        """``span``'s :func:`band_mask` over the keys from :meth:`first_seen` on."""
        reach = span.context if self.window is None else self.window
        return band_mask(span.count, self.first_seen(span), span.context, reach, groups, like)


def _joined(pool: torch.Tensor, runs: tuple[tuple[int, int], ...]) -> torch.Tensor:
    """``[1, kv_heads, L, dim]``: the runs of a pool layer ``[kv_heads, slots, dim]`` in
    token order, a view for one run, a copy for several."""
    if len(runs) == 1:
        first, count = runs[0]
        return pool[None, :, first : first + count]
    return torch.cat([pool[:, a : a + c] for a, c in runs], dim=1)[None]


def skip_runs(runs: tuple[tuple[int, int], ...], skip: int) -> tuple[tuple[int, int], ...]:
    """``runs`` (``(first_slot, num_slots)`` ranges in token order) without their first
    ``skip`` tokens."""
    kept: list[tuple[int, int]] = []
    for first, count in runs:
        if skip >= count:
            skip -= count
            continue
        kept.append((first + skip, count - skip))
        skip = 0
    return tuple(kept)


def band_mask(
    n: int, first: int, context: int, window: int, groups: int, like: torch.Tensor
) -> torch.Tensor:
    """``[groups * n, context - first]`` in ``like``'s dtype and device, added to the scores
    of ``n`` queries (the last ``n`` of ``context`` tokens) over the keys at positions
    ``first..context - 1``: 0 where query position ``p`` sees key position ``k``
    (``p - window < k <= p``), -inf elsewhere. Rows repeat per group (the packed query
    layout)."""
    rows = torch.arange(context - n, context, device=like.device)[:, None]
    keys = torch.arange(first, context, device=like.device)[None, :]
    hidden = (keys > rows) | (keys <= rows - window)  # [n, context - first]
    mask = like.new_zeros(n, context - first).masked_fill_(hidden, float("-inf"))
    return mask.repeat(groups, 1)


def attend_band(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    span: SeqSpan,
    groups: int,
    scale: float,
    band: Band,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One sequence: ``q`` ``[heads, n, dim]`` over the part of its runs of ``keys``/
    ``values`` (``[kv_heads, slots, dim]``) that ``band`` lets its queries see; returns
    ``[heads, n, dim]``. ``mask``: the span's :meth:`Band.mask` when the caller holds it
    (built here otherwise). Copies that part of the context when it spans several runs."""
    kv_heads, n, dim = keys.shape[0], q.shape[1], q.shape[2]
    runs = skip_runs(span.runs, band.first_seen(span))
    packed = q.reshape(kv_heads, groups * n, dim)[None]  # [1, kv_heads, groups * n, dim]
    k, v = _joined(keys, runs), _joined(values, runs)  # [1, kv_heads, L, dim]
    if mask is None and n > 1:  # a decoding token sees every key from first_seen on
        mask = band.mask(span, groups, q)
    if band.softcap is None:
        result = F.scaled_dot_product_attention(packed, k, v, attn_mask=mask, scale=scale)
    else:
        scores = torch.matmul(packed, k.transpose(-1, -2)) * scale
        scores = torch.tanh(scores / band.softcap) * band.softcap
        if mask is not None:
            scores = scores + mask
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        result = torch.matmul(weights, v)
    return result[0].reshape(kv_heads * groups, n, dim)

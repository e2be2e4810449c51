"""Attention over KV blocks in the pool, through transformers' ``AttentionInterface``.

A step feeds the model one packed row of tokens (``[1, T]``): every running sequence's next
token and chunks of prompts being prefilled. Llama-style attention modules project and rotate
them as usual, then call ``past_key_values.update`` (:class:`PagedKV` writes each token's
keys and values into its pool slot) and the registered attention function
(:func:`paged_attention`), which attends each sequence's queries to its own context where it
lies in the pool. Nothing is gathered into a per-request buffer for decoding; the cost of a
sequence grows with its own context, never with the batch's total squared.

Pool layer layout, flattened: ``[kv_heads, blocks * block_size, head_dim]``, so a run of
consecutive block ids is one contiguous token range: a zero-copy view.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.cache_utils import Cache

from prefixkv.engine.batch.band import Band, attend_band
from prefixkv.engine.batch.cascade import CascadeKernel, CascadePlan
from prefixkv.engine.kvbridge import UnsupportedModelError
from prefixkv.engine.kvbridge import layout_of as layout_of_config
from prefixkv.engine.native_linear import float_activations
from prefixkv.models import family_of
from prefixkv.models.family import text_config

if TYPE_CHECKING:
    from prefixkv.engine.batch.kernels import AttentionKernel, AttentionPlan

NAME = "prefixkv_paged"
PASSIVE = frozenset({"position_ids", "cache_position", "output_attentions", "use_cache"})
"""Keywords transformers' attention modules pass that do not change the attention's math
(the positions are already in the rotated queries and keys, and in the step's spans)."""
JOIN_BELOW = 512
"""Decoding over several runs joins them first (one copy, then one attention call) up to
this many context tokens, and reads them in place beyond: below it, the per-call overhead
of attending run by run costs more than copying (``prefixkv bench attention``)."""


@dataclass(frozen=True)
class SeqSpan:
    """One sequence's share of a step.

    ``queries``: its rows of the packed batch (``start``, ``count``); its context after
    this step is ``context`` tokens, held in ``runs`` (``(first_slot, num_slots)`` ranges of
    the flat pool layer, in token order, covering exactly ``context`` tokens). The queries
    are the last ``count`` of those tokens."""

    start: int
    count: int
    context: int
    runs: tuple[tuple[int, int], ...]


class CausalMasks:
    """One step's prefill masks, each built at the first layer that needs it and reused by
    the others: SDPA turns a bool mask into an additive one on every call (what that cost:
    ``docs/decisions.md``)."""

    def __init__(self) -> None:
        self._masks: dict[tuple[int, int, int], torch.Tensor] = {}  # (count, context, groups)
        # (count, context, groups, band): the band masks of windowed or capped layers
        self._bands: dict[tuple[int, int, int, Band], torch.Tensor] = {}

    def of(self, span: SeqSpan, groups: int, like: torch.Tensor) -> torch.Tensor:
        """``span``'s additive causal mask (see :func:`causal_mask`) in ``like``'s dtype and
        device; built once per shape."""
        key = (span.count, span.context, groups)
        mask = self._masks.get(key)
        if mask is None:
            mask = self._masks[key] = causal_mask(span.count, span.context, groups, like)
        return mask

    def band(self, span: SeqSpan, groups: int, band: Band, like: torch.Tensor) -> torch.Tensor:
        """``span``'s band mask (:meth:`.band.Band.mask`), built once per shape and band."""
        key = (span.count, span.context, groups, band)
        mask = self._bands.get(key)
        if mask is None:
            mask = self._bands[key] = band.mask(span, groups, like)
        return mask


class BandPlans:
    """One step's plans for layers with a window or a cap (:mod:`.band`), each made at the
    first layer that needs it (by the step's kernel) and reused by the others."""

    def __init__(self) -> None:
        self._plans: dict[Band, tuple[AttentionPlan, tuple[SeqSpan, ...]]] = {}

    def of(self, step: StepLayout, band: Band) -> tuple[AttentionPlan, tuple[SeqSpan, ...]]:
        """``step.kernel``'s plan for ``band`` over every sequence of the step, and the
        sequences it leaves to :func:`.band.attend_band`."""
        found = self._plans.get(band)
        if found is None:
            every = (*step.planned, *step.spans)
            found = self._plans[band] = step.kernel.plan_band(every, band, step.slots.device)
        return found


@dataclass(frozen=True)
class StepLayout:
    """Where one step's tokens go and whom they attend to."""

    slots: torch.Tensor
    """``[T]`` int64: the flat pool slot each packed token's KV is written to."""
    spans: tuple[SeqSpan, ...]
    """The sequences attended one by one (:func:`attend`)."""
    attention: AttentionPlan = field(default_factory=CascadePlan)
    """The sequences the attention kernel attends (see :mod:`.kernels`); ``spans`` holds the
    ones it leaves."""
    planned: tuple[SeqSpan, ...] = ()
    """The sequences ``attention`` attends; with ``spans``, every sequence of the step (a
    layer the kernels do not cover attends them all itself, :mod:`.band`)."""
    masks: CausalMasks = field(default_factory=CausalMasks, compare=False, repr=False)
    """The step's prefill masks, shared by its layers."""
    kernel: AttentionKernel = field(default_factory=CascadeKernel, compare=False, repr=False)
    """The kernel that planned ``attention``; it plans the band layers' too (``bands``)."""
    bands: BandPlans = field(default_factory=BandPlans, compare=False, repr=False)
    """The step's plans for layers with a window or a cap, shared by its layers."""

    @functools.cached_property
    def longest(self) -> int:
        """The longest context of the step's sequences (0 for none)."""
        return max((span.context for span in (*self.planned, *self.spans)), default=0)


class PagedKV(Cache):
    """A transformers Cache whose ``update`` writes a step's new keys/values into their pool
    slots (through the step's attention plan) and returns the whole pool layer
    (``[kv_heads, slots, head_dim]`` views), which :func:`paged_attention` reads through the
    step's spans. ``data``: the pool tensor ``[layers, 2, kv_heads, blocks, block_size,
    head_dim]``."""

    def __init__(self, data: torch.Tensor, layout: StepLayout) -> None:
        super().__init__(layers=[])
        layers, _, heads, blocks, size, dim = data.shape
        # [layers, 2, kv_heads, blocks * block_size, head_dim]: views, no copy
        self._flat = data.view(layers, 2, heads, blocks * size, dim)
        self._layout = layout

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        layer_idx: int,
        *args: Any,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``key_states``/``value_states``: ``[1, kv_heads, T, head_dim]`` for the packed row."""
        keys, values = self._flat[layer_idx, 0], self._flat[layer_idx, 1]
        layout = self._layout
        layout.attention.store(keys, values, key_states[0], value_states[0], layout.slots)
        return keys, values

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # positions are always passed explicitly

    def __len__(self) -> int:
        return int(self._flat.shape[0])


def paged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    *,
    scaling: float | None = None,
    step: StepLayout | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """``query``: ``[1, heads, T, dim]``; ``key``/``value``: a pool layer from PagedKV.
    Returns ``[1, T, heads, dim]`` like transformers' own attention functions. A layer with
    a ``softcap``, or a ``sliding_window`` shorter than some context of the step, is attended
    by :func:`.band.attend_band` (the kernels compute plain causal attention, which is all a
    window no shorter than every context leaves). Raises ValueError for a dropout or a keyword
    that would change the math and is not implemented here (:data:`PASSIVE`)."""
    if step is None:
        raise RuntimeError(
            f"the {NAME!r} attention runs only inside prefixkv's batch runner (no step given)"
        )
    unknown = sorted(set(kwargs) - PASSIVE)
    if dropout or unknown:
        raise ValueError(
            f"the {NAME!r} attention implements no dropout ({dropout}) and none of {unknown}"
        )
    heads, dim = query.shape[1], query.shape[3]
    groups = heads // key.shape[0]
    scale = dim**-0.5 if scaling is None else scaling
    out = query.new_empty(query.shape[2], heads, dim)  # [T, heads, dim]
    if softcap is not None or (sliding_window is not None and sliding_window < step.longest):
        band = Band(sliding_window, softcap)
        plan, left = step.bands.of(step, band)
        plan.attend(query[0], key, value, out, scale)
        for span in left:
            q = query[0, :, span.start : span.start + span.count]  # [heads, n, dim]
            mask = step.masks.band(span, groups, band, query) if span.count > 1 else None
            attended = attend_band(q, key, value, span, groups, scale, band, mask)
            out[span.start : span.start + span.count] = attended.transpose(0, 1)
        return out[None], None
    step.attention.attend(query[0], key, value, out, scale)
    for span in step.spans:
        q = query[0, :, span.start : span.start + span.count]  # [heads, n, dim]
        mask = step.masks.of(span, groups, query) if span.count > 1 else None
        attended = attend(q, key, value, span, groups, scaling, mask)  # [heads, n, dim]
        out[span.start : span.start + span.count] = attended.transpose(0, 1)
    return out[None], None


def attend(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    span: SeqSpan,
    groups: int,
    scale: float | None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One sequence: ``q`` ``[heads, n, dim]`` over its runs of ``keys``/``values``
    (``[kv_heads, slots, dim]``); returns ``[heads, n, dim]``. ``mask``: the span's
    :func:`causal_mask` when the caller holds it (a prefill chunk builds it otherwise).

    Decoding (n = 1) reads each run in place (several runs share one softmax over their
    joined scores), except short contexts over several runs, joined (``JOIN_BELOW``). A
    prefill chunk (n > 1) joins its runs (the chunk's compute dwarfs
    that copy) and applies the causal mask at its offset."""
    kv_heads, n, dim = keys.shape[0], q.shape[1], q.shape[2]
    # Grouped-query attention: the heads sharing kv head h are rows of one packed query.
    packed = q.reshape(kv_heads, groups * n, dim)[None]  # [1, kv_heads, groups * n, dim]
    views = [(keys[:, a : a + c][None], values[:, a : a + c][None]) for a, c in span.runs]
    if n == 1 and len(views) == 1:
        k, v = views[0]
        result = F.scaled_dot_product_attention(packed, k, v, scale=scale)
    elif n == 1 and span.context > JOIN_BELOW:
        result = _merge_runs(packed, views, scale)
    else:
        k = torch.cat([k for k, _ in views], dim=2) if len(views) > 1 else views[0][0]
        v = torch.cat([v for _, v in views], dim=2) if len(views) > 1 else views[0][1]
        if n > 1 and mask is None:
            mask = causal_mask(n, span.context, groups, q)
        result = F.scaled_dot_product_attention(packed, k, v, attn_mask=mask, scale=scale)
    return result[0].reshape(kv_heads * groups, n, dim)


def _merge_runs(
    packed: torch.Tensor, views: list[tuple[torch.Tensor, torch.Tensor]], scale: float | None
) -> torch.Tensor:
    """Attention of one query row over several runs, reading each in place: the scores of
    all runs (``[1, kv_heads, groups, context]``, small) are joined for one softmax, then
    each run's values are weighted by their share. No KV is copied."""
    q = packed * (packed.shape[-1] ** -0.5 if scale is None else scale)
    scores = torch.cat([torch.matmul(q, k.transpose(-1, -2)) for k, _ in views], dim=-1)
    weights = torch.softmax(scores, dim=-1)
    out: torch.Tensor | None = None
    start = 0
    for _, v in views:
        part = weights[..., start : start + v.shape[-2]]
        out = torch.matmul(part, v) if out is None else torch.baddbmm(out[0], part[0], v[0])[None]
        start += v.shape[-2]
    assert out is not None
    return out


def causal_mask(n: int, context: int, groups: int, like: torch.Tensor) -> torch.Tensor:
    """``[groups * n, context]`` in ``like``'s dtype and device, added to the scores: 0 where
    query i (the (context - n + i)-th token) sees key j (j up to itself), -inf elsewhere.
    Rows repeat per group (the packed query layout)."""
    rows = torch.arange(context - n, context, device=like.device)[:, None]
    hidden = torch.arange(context, device=like.device)[None, :] > rows  # [n, context]
    mask = like.new_zeros(n, context).masked_fill_(hidden, float("-inf"))
    return mask.repeat(groups, 1)


@contextlib.contextmanager
def active(model: Any) -> Iterator[None]:
    """Run ``model`` with paged attention inside the block (call under the engine's model
    lock: the setting is the model's, shared by every caller)."""
    config = model.config
    before = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield
    finally:
        config._attn_implementation = before


def check_supported(model: Any) -> None:
    """Raise UnsupportedModelError unless paged attention reproduces the model's own logits
    on a 3-token probe, with every layer's attention going through it (the model calls
    ``AttentionInterface`` and ``Cache.update`` like Llama does). The error names the
    model's family and the attention it declares (:attr:`prefixkv.models.Family.attention`)."""
    config = model.config
    text = text_config(config)  # a multimodal model's text decoder
    family = family_of(model)
    name = f"{type(model).__name__} ({family.name} family: {family.attention})"
    layers = int(text.num_hidden_layers)
    lay = layout_of_config(config, next(model.parameters()).dtype)
    device = next(model.parameters()).device
    # [layers, 2, kv_heads, 1 block, 4 tokens, head_dim]
    data = torch.zeros(
        layers, 2, lay.num_kv_heads, 1, 4, lay.head_dim, dtype=lay.dtype, device=device
    )
    step = StepLayout(torch.arange(3, device=device), (SeqSpan(0, 3, 3, ((0, 3),)),))
    ids = torch.tensor([[1, 2, 3]], device=device) % int(text.vocab_size)
    calls = _CallCount()
    try:  # 8-bit activations on float32 for the probe: its tolerance is float32's
        with torch.inference_mode(), float_activations(model):
            expected = model(input_ids=ids, use_cache=False).logits
            with active(model), calls.watch():
                got = model(
                    input_ids=ids,
                    position_ids=torch.arange(3, device=device)[None],
                    past_key_values=PagedKV(data, step),
                    use_cache=True,
                    step=step,
                ).logits
    except Exception as exc:
        raise UnsupportedModelError(
            f"{name} does not run with prefixkv's paged attention ({exc})"
        ) from exc
    if calls.count != layers or not torch.allclose(got, expected, rtol=1e-3, atol=1e-3):
        raise UnsupportedModelError(
            f"{name} does not run with prefixkv's paged attention: "
            f"{calls.count} of {layers} layers called it, max logit difference "
            f"{(got - expected).abs().max().item():.3g}"
        )


class _CallCount:
    """Counts calls of the paged attention function while watching."""

    def __init__(self) -> None:
        self.count = 0

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        def counted(*args: Any, **kwargs: Any) -> tuple[torch.Tensor, None]:
            self.count += 1
            return paged_attention(*args, **kwargs)

        AttentionInterface.register(NAME, counted)
        try:
            yield
        finally:
            AttentionInterface.register(NAME, paged_attention)


AttentionInterface.register(NAME, paged_attention)

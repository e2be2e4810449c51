"""Phi-3: the checkpoint joins the projections itself, ``qkv_proj`` (queries, keys, values
by rows) and ``gate_up_proj``, so there are no siblings to join. Phi3MLP splits
``gate_up_proj``'s output with ``chunk(2)`` into ``gate, up`` (gate columns first) and
computes ``up * act(gate)``: the native gated MLP's ``[gate | up]`` layout and math.
Phi3RMSNorm is Llama's RMS norm line for line. A ``sliding_window`` config (Phi-3 mini's
2047) makes every layer a sliding-window layer, served (:mod:`prefixkv.engine.batch.band`)."""

from __future__ import annotations

from transformers.models.phi3.modeling_phi3 import Phi3MLP, Phi3RMSNorm

from prefixkv.models.family import Family, GatedMLP

FAMILY = Family(
    name="phi3",
    model_types=("phi3",),
    attention="full causal attention, or a sliding window on every layer where "
    "sliding_window is set, rotary positions (partial where partial_rotary_factor < 1), joined qkv_proj",
    siblings=(),
    norms=(Phi3RMSNorm,),
    mlps=(GatedMLP((Phi3MLP,), gate_up=("gate_up_proj",), activation="activation_fn"),),
    keeps="nothing: norms and MLPs are native where hidden_act is SiLU",
)

"""What the native linear kernel multiplies the weights with: ``--activations``.

``fp32`` (the default) keeps every layer's activations in float32: each output is the fp32
multiply-add chain of :mod:`prefixkv.kernels.formats`, exact against the fp32 reference
whatever the weights' format. ``q8`` runs layers whose weights are GGUF ``q8_0``, ``q4_0``,
``q4_1`` or K-quant (``q4_k``, ``q5_k``, ``q6_k``) blocks on integer dot products, as
llama.cpp does: each input row is quantized to 8 bits per group of 32 before the layer
(:mod:`prefixkv.kernels.int8`); other layers (f32, bf16) keep float32 activations. Rows are quantized each on its own and every
output is summed in one order, so cached == uncached and batched == alone still hold bit for
bit; but outputs are not those of fp32 activations (``prefixkv bench formats`` measures the
greedy agreement).
"""

from __future__ import annotations

from typing import Protocol

from prefixkv.kernels.formats import INT_DOT, PackedWeight
from prefixkv.kernels.int8 import to_int_dot

ACTIVATIONS = ("fp32", "q8")


class Activations(Protocol):
    """How one packed layer meets its input rows."""

    name: str

    def adapt(self, weight: PackedWeight) -> PackedWeight:
        """``weight`` in the format whose kernel computes with these activations (``weight``
        itself where none does). Mutates nothing."""
        ...


class Fp32Activations:
    """Float32 activations for every layer: the weight as packed."""

    name = "fp32"

    def adapt(self, weight: PackedWeight) -> PackedWeight:
        return weight


class Q8Activations:
    """8-bit activations and integer dots where the weight is q8_0, q4_0, q4_1 or a K-quant."""

    name = "q8"

    def adapt(self, weight: PackedWeight) -> PackedWeight:
        return to_int_dot(weight) if weight.format in INT_DOT else weight


FP32_ACTIVATIONS = Fp32Activations()


def activations(name: str) -> Activations:
    """The activations called ``name`` (one of :data:`ACTIVATIONS`); ValueError otherwise."""
    if name == "fp32":
        return FP32_ACTIVATIONS
    if name == "q8":
        return Q8Activations()
    raise ValueError(f"unknown activations {name!r}; choose one of {', '.join(ACTIVATIONS)}")

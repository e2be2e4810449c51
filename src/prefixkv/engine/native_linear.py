"""The ``native`` linear kernel: prefixkv's own GEMM (``native_linear.c``) on weights packed once.

Why not oneDNN: calling SmolLM2's 30 layers in turn (their 420 MB of weights read from memory,
as a forward does) took oneDNN 25-28 ms for one row and 33-37 ms for 16 on this project's AMD
EPYC, its weights streaming at ~15 GB/s of the ~34 GB/s the machine reads. This kernel takes
16-17 ms and 21-23 ms, and the same time at 512 rows (556 against 564 ms, ~195 GFLOP/s).

Why it is exact: every output is one multiply-add chain over the input features in order,
whatever the call's rows, so a token's activations are the same prefilled in a 512-token
chunk, decoded alone, or batched with 15 others: cached and uncached prompts, the serial
engine and the batch runner all agree bit for bit (oneDNN's one-row calls of 1536-wide
inputs rounded differently from its larger ones). No row padding is needed (oneDNN keeps
state per row count; this kernel keeps none).
"""

from __future__ import annotations

import ctypes

import torch

from prefixkv.engine.fused import swap_linears
from prefixkv.engine.native_build import load
from prefixkv.engine.native_layers import swap_llama_layers


class NativeLinearLayer(torch.nn.Module):
    """``y = x W^T + b`` through ``prefixkv_linear``. ``packed``: the weight as
    ``[ceil(out / block), in_features, block]`` column blocks (zero past ``out_features``);
    the plain weight is not kept."""

    packed: torch.Tensor

    def __init__(self, linear: torch.nn.Linear, library: ctypes.CDLL) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        block = int(library.prefixkv_linear_block())
        blocks = -(-self.out_features // block)
        weight = linear.weight.detach()  # [out, in]
        padded = weight.new_zeros(blocks * block, self.in_features)
        padded[: self.out_features] = weight
        # [blocks, in, block]: block j holds output columns [j * block, (j + 1) * block)
        self.register_buffer("packed", padded.view(blocks, block, -1).transpose(1, 2).contiguous())
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach())
        self._library = library

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``[..., in_features]`` float32 -> ``[..., out_features]``."""
        rows = x.reshape(-1, self.in_features)
        if not rows.is_contiguous():
            rows = rows.contiguous()
        out = rows.new_empty(rows.shape[0], self.out_features)
        bias = self.bias
        self._library.prefixkv_linear(
            rows.data_ptr(), rows.shape[0], self.in_features, self.packed.data_ptr(),
            None if bias is None else bias.data_ptr(), self.out_features, out.data_ptr(),
            torch.get_num_threads(),
        )  # fmt: skip
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, native"


def native_runs(weight: torch.Tensor) -> bool:
    """True where :class:`NativeLinearLayer` can hold ``weight`` (the library aside)."""
    return weight.device.type == "cpu" and weight.dtype == torch.float32


class NativeLinear:
    """:class:`NativeLinearLayer` for every ``nn.Linear`` of a float32 CPU model, sibling
    projections of one input first joined into one (:mod:`prefixkv.engine.fused`); then, in
    Llama layers, the RMS norms and the MLP's activation in C too
    (:mod:`prefixkv.engine.native_layers`)."""

    name = "native"

    def install(self, model: torch.nn.Module) -> int:
        """Raises RuntimeError (NativeUnavailable where the library does not build) before
        changing anything when a layer is not float32 on the CPU."""
        for name, layer in model.named_modules():
            if isinstance(layer, torch.nn.Linear) and not native_runs(layer.weight):
                raise RuntimeError(
                    f"native linear layers need float32 CPU weights; {name} has "
                    f"{layer.weight.dtype} on {layer.weight.device} (use --linear-kernel torch)"
                )
        library = load()
        swapped = swap_linears(model, lambda linear: NativeLinearLayer(linear, library))
        swap_llama_layers(model, library)
        return swapped

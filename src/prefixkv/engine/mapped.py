"""Weights that still live in the checkpoint file's memory map get memory of their own.

transformers loads safetensors through a memory map: each parameter is a view of the file's
pages. Once the linear kernel has packed its copies of the projection weights
(:mod:`prefixkv.engine.linear`), the parameters it did not replace (embeddings, norms) are
still such views, and any one of them keeps the whole mapping, and every page of it that
loading touched, resident: 513 MB for SmolLM2, beside the packed copies. Copying those few
parameters (108 MB for SmolLM2) lets the mapping go.

A storage torch allocated itself can be resized; one wrapping memory torch did not allocate
(a file mapping) cannot: that is the test.
"""

from __future__ import annotations

import torch
from torch import nn


def _mapped(tensor: torch.Tensor) -> bool:
    return not tensor.untyped_storage().resizable()


@torch.no_grad()
def copy_mapped_weights(model: nn.Module) -> int:
    """Give every parameter and buffer of ``model`` whose storage torch did not allocate (a
    view of a file mapping) a copy of its own, in place; the bytes copied. Values, dtypes,
    devices and ``requires_grad`` are unchanged; mutates ``model``'s tensors only."""
    copied = 0
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if _mapped(param):
                param.data = param.data.clone()
                copied += param.numel() * param.element_size()
        for name, buffer in module.named_buffers(recurse=False):
            if buffer is not None and _mapped(buffer):
                module._buffers[name] = buffer.clone()
                copied += buffer.numel() * buffer.element_size()
    return copied

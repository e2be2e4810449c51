"""Which logits the per-token work may run on numpy, on the calling thread.

PyTorch splits an op over more than 32K elements across its intra-op pool, so each op over
a vocabulary's logits is a parallel region; on a loaded host such a region waits for a
worker the OS has descheduled. The grammar bitmask (:mod:`prefixkv.engine.bitmask`) and the
greedy choice (:mod:`prefixkv.engine.sampling`) therefore use numpy on a view of the tensor
where numpy can view it, and torch otherwise.
"""

from __future__ import annotations

import torch

# The dtypes numpy holds; bfloat16 is not one of them.
_NUMPY_DTYPES = frozenset({torch.float16, torch.float32, torch.float64})


def numpy_views(tensor: torch.Tensor) -> bool:
    """True when ``tensor.detach().numpy()`` shares its memory: a CPU tensor of a dtype
    numpy holds. Reads nothing but the dtype and device."""
    return tensor.dtype in _NUMPY_DTYPES and tensor.device.type == "cpu"

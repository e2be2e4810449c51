"""The model fingerprint that names KV blocks stored below RAM (see :mod:`prefixkv.tiers`).

KV blocks written by one model must never be served to another, nor to the same weights in
another dtype or KV layout. The fingerprint hashes every tensor of the model's state dict
(name, dtype, shape and bytes, in name order) and the KV layout: two processes loading the
same weights the same way agree on it, on any machine; any change of a weight does not. A
weight packed for oneDNN (:mod:`prefixkv.engine.linear`) is hashed as its plain values under a
name marking the kernel, and one packed for the native kernel is hashed as its column blocks
(a buffer named ``packed``): the kernels round differently, so their KV never mixes.
Costs one pass over the weights (~0.1 s for SmolLM2's 540 MB in fp32 here).
"""

from __future__ import annotations

import torch

from prefixkv.cache.layout import KVLayout
from prefixkv.extras import require


def model_fingerprint(model: torch.nn.Module, layout: KVLayout) -> bytes:
    """16 bytes naming ``model``'s weights and ``layout``. Needs the ``[tiers]`` extra."""
    require("tiers", "a model fingerprint")
    from prefixkv.tiers.naming import fingerprint_of

    parts = [repr(layout).encode()]
    for name, tensor in sorted(model.state_dict().items()):
        if tensor.is_mkldnn:
            name, tensor = f"{name}@onednn", tensor.to_dense()
        flat = tensor.detach().to("cpu").contiguous().view(-1)
        parts += [name.encode(), f"{flat.dtype}{tuple(tensor.shape)}".encode()]
        parts.append(bytes(flat.view(torch.uint8).numpy().data) if flat.numel() else b"")
    return fingerprint_of(*parts)

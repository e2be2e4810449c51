"""A grammar's token bitmask applied to one sequence's logits, and the private copy of the
logits that processors write: the per-token work a constrained request adds to a step.

The bitmask is llguidance's: ``[words]`` int32, bit ``i % 32`` of word ``i // 32`` set when
token ``i`` is allowed next. Applying it sets every other logit to ``-inf``, and every logit
past ``32 * words`` too (a model's padding ids beyond its tokenizer are never allowed).

Why numpy, on the calling thread: PyTorch splits an elementwise op over more than 32K
elements across its intra-op pool, so each op over a 49K vocabulary is a parallel region.
On an idle host that is harmless; on a loaded one each region waits for a worker thread the
OS has descheduled. With the torch version (:func:`apply_bitmask_reference`, six such ops,
and ``clone`` for the copy) a masked token's ``Decoding.accept`` took 8.6 ms p50 and 105 ms
p99 on SmolLM2 at load average 6-10; with numpy (three passes, and a numpy copy) 0.75 ms
and 9.6 ms in the same run (``benchmarks/constrained_steps.py engine``). The two agree bit
for bit (``tests/engine/test_bitmask.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from prefixkv.engine.numpy_views import numpy_views

_SHIFTS = torch.arange(32, dtype=torch.int32)


def apply_bitmask(logits: torch.Tensor, bitmask: np.ndarray) -> torch.Tensor:
    """Masks ``logits`` (``[vocab]``, writable, CPU) in place to the tokens ``bitmask``
    allows and returns it; the same values as :func:`apply_bitmask_reference`."""
    if not numpy_views(logits):  # bfloat16, or not on the CPU
        return apply_bitmask_reference(logits, bitmask)
    # Little-endian words as bytes, bits lowest first: bit j of byte k is token 8k + j (a
    # no-op conversion on the little-endian hosts the project runs on).
    allowed = np.unpackbits(bitmask.astype("<u4", copy=False).view(np.uint8), bitorder="little")
    view = logits.detach().numpy()  # shares the tensor's memory
    known = min(view.shape[0], allowed.shape[0])
    np.copyto(view[:known], -np.inf, where=allowed[:known] == 0)
    view[known:] = -np.inf
    return logits


def apply_bitmask_reference(logits: torch.Tensor, bitmask: np.ndarray) -> torch.Tensor:
    """The first implementation, in torch ops (kept to check :func:`apply_bitmask`)."""
    # [words] int32 -> [words, 32] bits, lowest bit first -> [32 * words] allowed
    bits = (torch.from_numpy(bitmask).unsqueeze(-1) >> _SHIFTS) & 1
    allowed = torch.zeros(logits.shape[-1], dtype=torch.bool)
    known = min(logits.shape[-1], bits.numel())
    allowed[:known] = bits.view(-1)[:known].bool()
    return logits.masked_fill_(~allowed, -torch.inf)


def private_copy(logits: torch.Tensor) -> torch.Tensor:
    """A copy of ``logits`` (``[vocab]``, possibly an inference tensor) that processors may
    write; for CPU dtypes numpy holds, copied by numpy on the calling thread (a torch
    ``clone`` of 49K values is a parallel region, see the module's note)."""
    if not numpy_views(logits):  # bfloat16, or not on the CPU
        return logits.clone()
    return torch.from_numpy(logits.detach().numpy().copy())

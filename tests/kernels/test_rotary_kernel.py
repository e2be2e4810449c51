"""The native rotary embedding (``prefixkv_rotary`` in ``csrc/layers.c``): bit-equal to
transformers' ``apply_rotary_pos_emb`` in float32, whatever the rows, heads and head dim,
each row the same alone as in any call (its door's refusals: test_door.py)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from tests.kernels.loaded import loaded


def _reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int) -> torch.Tensor:
    """transformers' rotation of the first ``heads`` heads of ``x`` (``[rows, width]``), the
    other columns as they are, as a new tensor."""
    rows, dim = cos.shape
    q = x[:, : heads * dim].reshape(1, rows, heads, dim).transpose(1, 2)
    rotated, _ = apply_rotary_pos_emb(q, q, cos[None], sin[None])
    out = x.clone()
    out[:, : heads * dim] = rotated.transpose(1, 2).reshape(rows, heads * dim)
    return out


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 80).map(lambda half: 2 * half),  # head dim: whole and partial vectors
    st.integers(1, 6),  # heads rotated
    st.integers(0, 2),  # heads after them left alone (a joined q/k/v's values)
    st.integers(1, 9),  # rows
    st.sampled_from([1e-3, 1.0, 300.0]),
    st.integers(0, 2**16),
)
def test_rotary_is_transformers_bit_for_bit_and_each_row_alone(
    dim: int, heads: int, extra: int, rows: int, scale: float, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, (heads + extra) * dim, generator=gen) * scale
    # any values, not only a cosine's: the arithmetic must match for every input
    cos, sin = torch.randn(2, rows, dim, generator=gen).unbind(0)
    want = _reference(x, cos, sin, heads)
    got = x.clone()
    loaded().rotary(got, cos, sin, heads)
    assert torch.equal(got, want)
    for r in range(rows):
        alone = x[r : r + 1].clone()
        loaded().rotary(alone, cos[r : r + 1], sin[r : r + 1], heads)
        assert torch.equal(alone[0], got[r])


def test_rotary_of_a_models_own_cos_and_sin_over_a_prefill_sized_call() -> None:
    """Real cos/sin (rope scaling included) and enough rows for the library's threads."""
    config = LlamaConfig(hidden_size=576, num_attention_heads=9, head_dim=64,
                         rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                       "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                       "original_max_position_embeddings": 128})  # fmt: skip
    rope = LlamaRotaryEmbedding(config)
    positions = torch.arange(300, 812)[None]
    x = torch.randn(512, 15 * 64)
    with torch.inference_mode():
        cos, sin = (t[0].contiguous() for t in rope(x[None], positions))
        want = _reference(x, cos, sin, 12)
        got = x.clone()
        loaded().rotary(got, cos, sin, 12)
    assert torch.equal(got, want)

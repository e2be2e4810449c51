"""Shapes of real checkpoints (with SmolLM2's vocabulary) and the tensors a model of a shape
holds, each with its Hugging Face and GGUF name; values are seeded random, one tensor at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

VOCAB = 49152  # SmolLM2's tokenizer: every model here uses it, so every model has its vocabulary
CONTEXT = 8192  # max_position_embeddings: SmolLM2's; enough for any benchmark here
STD = 0.02  # HF's initializer_range for both families


@dataclass(frozen=True)
class Shape:
    """One model's dimensions; head_dim is hidden // heads for every entry."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    inter: int
    rope_theta: float
    rms_eps: float

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


# (family, size) -> Shape. Sources: the config.json of each named checkpoint on the HF hub;
# all of them tie lm_head to the embedding. Only the vocabulary (49152) is SmolLM2's, not theirs.
SHAPES: dict[tuple[str, str], Shape] = {
    # meta-llama/Llama-3.2-1B: 2048 hidden, 16 layers, 32 heads, 8 kv heads, 8192 inter
    ("llama", "1b"): Shape(2048, 16, 32, 8, 8192, 500000.0, 1e-5),
    # meta-llama/Llama-3.2-3B: 3072 hidden, 28 layers, 24 heads, 8 kv heads, 8192 inter
    ("llama", "3b"): Shape(3072, 28, 24, 8, 8192, 500000.0, 1e-5),
    # Qwen/Qwen2.5-1.5B: 1536 hidden, 28 layers, 12 heads, 2 kv heads, 8960 inter
    ("qwen2", "1b"): Shape(1536, 28, 12, 2, 8960, 1000000.0, 1e-6),
    # Qwen/Qwen2.5-3B: 2048 hidden, 36 layers, 16 heads, 2 kv heads, 11008 inter
    ("qwen2", "3b"): Shape(2048, 36, 16, 2, 11008, 1000000.0, 1e-6),
    # meta-llama/Llama-3.1-8B: 4096 hidden, 32 layers, 32 heads, 8 kv heads, 14336 inter
    # (with SmolLM2's vocabulary and a tied head: 7.18 B parameters, not 8.03)
    ("llama", "8b"): Shape(4096, 32, 32, 8, 14336, 500000.0, 1e-5),
    # tiny (for tests, about 13 MB in f32, nearly all of it the 49152 x 64 embedding)
    ("llama", "tiny"): Shape(64, 2, 4, 2, 128, 500000.0, 1e-5),
    ("qwen2", "tiny"): Shape(64, 2, 4, 2, 128, 1000000.0, 1e-6),
    # tiny256 (for tests of the K-quants, whose rows are super-blocks of 256 values)
    ("llama", "tiny256"): Shape(256, 2, 4, 2, 512, 500000.0, 1e-5),
    ("qwen2", "tiny256"): Shape(256, 2, 4, 2, 512, 1000000.0, 1e-6),
}


@dataclass(frozen=True)
class TensorSpec:
    """One stored tensor: ``shape`` is torch's (rows, columns) order; ``norm`` ones are ones."""

    hf_name: str
    gguf_name: str
    shape: tuple[int, ...]
    norm: bool


def _layer(family: str, s: Shape, i: int) -> list[TensorSpec]:
    """Layer ``i``'s tensors in a fixed order (norms, attention, MLP)."""
    kv = s.kv_heads * s.head_dim
    hf, gg = f"model.layers.{i}.", f"blk.{i}."
    specs = [
        TensorSpec(hf + "input_layernorm.weight", gg + "attn_norm.weight", (s.hidden,), True),
        TensorSpec(hf + "post_attention_layernorm.weight", gg + "ffn_norm.weight", (s.hidden,), True),
    ]  # fmt: skip
    attention = {"q": ("attn_q", s.hidden), "k": ("attn_k", kv), "v": ("attn_v", kv)}
    for letter, (part, rows) in attention.items():
        specs.append(TensorSpec(f"{hf}self_attn.{letter}_proj.weight", f"{gg}{part}.weight",
                                (rows, s.hidden), False))  # fmt: skip
        if family == "qwen2":  # Qwen2 alone has q/k/v biases
            specs.append(TensorSpec(f"{hf}self_attn.{letter}_proj.bias", f"{gg}{part}.bias",
                                    (rows,), False))  # fmt: skip
    specs += [
        TensorSpec(hf + "self_attn.o_proj.weight", gg + "attn_output.weight", (s.hidden, s.hidden), False),
        TensorSpec(hf + "mlp.gate_proj.weight", gg + "ffn_gate.weight", (s.inter, s.hidden), False),
        TensorSpec(hf + "mlp.up_proj.weight", gg + "ffn_up.weight", (s.inter, s.hidden), False),
        TensorSpec(hf + "mlp.down_proj.weight", gg + "ffn_down.weight", (s.hidden, s.inter), False),
    ]  # fmt: skip
    return specs


def tensor_groups(family: str, shape: Shape) -> Iterator[tuple[str, list[TensorSpec]]]:
    """Yields ("embed", [embedding, final norm]) then ("layer-<i>", layer i's tensors).

    Tied embeddings: there is no lm_head tensor."""
    yield (
        "embed",
        [
            TensorSpec(
                "model.embed_tokens.weight", "token_embd.weight", (VOCAB, shape.hidden), False
            ),
            TensorSpec("model.norm.weight", "output_norm.weight", (shape.hidden,), True),
        ],
    )
    for i in range(shape.layers):
        yield f"layer-{i}", _layer(family, shape, i)


def tensor_values(spec: TensorSpec, seed: int, index: int) -> np.ndarray:
    """The float32 values of ``spec``, the ``index``-th tensor of the model: ones for a norm,
    else normal with std :data:`STD` from a generator seeded by (``seed``, ``index``), so a
    tensor's values do not depend on which others were generated or in which format."""
    if spec.norm:
        return np.ones(spec.shape, dtype=np.float32)
    rng = np.random.default_rng([seed, index])
    values = rng.standard_normal(spec.shape, dtype=np.float32)
    values *= STD  # in place: no second copy of a 600 MB embedding
    return values

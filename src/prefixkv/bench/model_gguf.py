"""Write a random model of a :class:`~prefixkv.bench.model_shapes.Shape` as one GGUF file
(matrices in Q8_0, Q4_0 or Q4_1, or llama.cpp's Q4_K_M / Q5_K_M mix; norms and biases F32),
with SmolLM2's tokenizer metadata copied from its GGUF. Tensors are generated, quantised and
written one at a time.

The K mixes follow llama.cpp's ``llama_tensor_get_type``: every matrix in the base type
(Q4_K or Q5_K) but the head, which is Q6_K (here the token embedding, the head of these
tied models), and ``attn_v`` and ``ffn_down`` in Q6_K in the layers ``use_more_bits``
picks (the first and last eighth, and every third between). A matrix whose rows are not a
multiple of 256 takes llama.cpp's fallback (Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from prefixkv.bench.model_kquants import K_TYPES, SUPER, quantize_k
from prefixkv.bench.model_shapes import CONTEXT, VOCAB, Shape, TensorSpec, tensor_values

GGML_TYPES = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1"}
K_MIXES = {"q4_k_m": "Q4_K", "q5_k_m": "Q5_K"}  # --weights -> the mix's base type
GGUF_WEIGHTS = (*GGML_TYPES, *K_MIXES)
_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}  # rows not a multiple of 256
_CHUNK_ROWS = 4096  # rows quantised at once: bounds quantize()'s float temporaries (~5 copies)


def _copy_tokenizer(writer: Any, source: Path) -> None:
    """Copies every ``tokenizer.*`` key (vocabulary, merges, specials, chat template) of the
    GGUF at ``source`` into ``writer``."""
    from gguf import GGUFReader, GGUFValueType

    reader = GGUFReader(str(source))
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)


def _add_metadata(writer: Any, name: str, shape: Shape) -> None:
    writer.add_name(name)
    writer.add_block_count(shape.layers)
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(shape.hidden)
    writer.add_feed_forward_length(shape.inter)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_freq_base(shape.rope_theta)
    writer.add_layer_norm_rms_eps(shape.rms_eps)
    writer.add_vocab_size(VOCAB)
    writer.add_rope_dimension_count(shape.head_dim)


def use_more_bits(layer: int, layers: int) -> bool:
    """llama.cpp's choice of the layers whose attn_v and ffn_down get more bits."""
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def k_mix_type(gguf_name: str, columns: int, base: str, layers: int) -> str:
    """The GGML type name of the matrix ``gguf_name`` (rows of ``columns`` values) in the K
    mix of ``base`` ("Q4_K" or "Q5_K") over ``layers`` layers (module docstring)."""
    head = gguf_name in ("output.weight", "token_embd.weight")  # token_embd: the tied head
    more = gguf_name.endswith((".attn_v.weight", ".ffn_down.weight")) and use_more_bits(
        int(gguf_name.split(".")[1]), layers
    )
    kind = "Q6_K" if head or more else base
    return _FALLBACK[kind] if columns % SUPER else kind


def tensor_type(gguf_name: str, shape: tuple[int, ...], weights: str, layers: int) -> Any:
    """The GGML type the tensor ``gguf_name`` of ``shape`` (rows, columns) is stored in for
    ``weights``: F32 for a 1-D tensor, else the format's (the K mixes: :func:`k_mix_type`)."""
    from gguf import GGMLQuantizationType

    if len(shape) == 1:
        return GGMLQuantizationType.F32
    if weights in K_MIXES:
        return GGMLQuantizationType[k_mix_type(gguf_name, shape[1], K_MIXES[weights], layers)]
    return GGMLQuantizationType[GGML_TYPES[weights]]


def quantized(values: np.ndarray, qtype: Any) -> np.ndarray:
    """``values`` (rows, cols) float32 as GGML ``qtype`` blocks (rows, bytes a row), quantised
    _CHUNK_ROWS rows at a time; a 1-D tensor is returned as it is (F32)."""
    from gguf.quants import quantize

    if values.ndim == 1:
        return values
    if qtype.name in K_TYPES:  # gguf-py reads K-quants but cannot write them
        return np.concatenate([quantize_k(values[r : r + _CHUNK_ROWS], qtype.name)
                               for r in range(0, len(values), _CHUNK_ROWS)])  # fmt: skip
    parts = [
        quantize(values[r : r + _CHUNK_ROWS], qtype) for r in range(0, len(values), _CHUNK_ROWS)
    ]
    return np.concatenate(parts)


def write_gguf(
    path: Path,
    *,
    family: str,
    shape: Shape,
    specs: list[TensorSpec],
    weights: str,
    seed: int,
    tokenizer_gguf: Path,
) -> None:
    """Writes the model whose tensors are ``specs`` (in order) to ``path``: matrices as
    ``weights`` (one of :data:`GGUF_WEIGHTS`), values from
    :func:`~prefixkv.bench.model_shapes.tensor_values`. Holds one tensor (float32, plus its
    quantised copy) at a time. Raises KeyError for an unknown ``weights``."""
    from gguf import GGUFWriter
    from gguf.quants import quant_shape_to_byte_shape

    qtypes = [tensor_type(s.gguf_name, s.shape, weights, shape.layers) for s in specs]
    writer = GGUFWriter(str(path), family)
    _add_metadata(writer, path.stem, shape)
    _copy_tokenizer(writer, tokenizer_gguf)
    for spec, qtype in zip(specs, qtypes, strict=True):
        if len(spec.shape) == 1:  # F32 as it is
            writer.add_tensor_info(
                spec.gguf_name, spec.shape, np.dtype(np.float32), 4 * spec.shape[0]
            )
        else:  # raw blocks: gguf takes the byte shape and the GGML type
            byte_shape = quant_shape_to_byte_shape(spec.shape, qtype)
            nbytes = int(np.prod(byte_shape))
            writer.add_tensor_info(spec.gguf_name, byte_shape, np.dtype(np.uint8), nbytes, qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for index, (spec, qtype) in enumerate(zip(specs, qtypes, strict=True)):
        writer.write_tensor_data(quantized(tensor_values(spec, seed, index), qtype))
    writer.close()

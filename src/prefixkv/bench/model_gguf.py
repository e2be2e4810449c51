"""Write a random model of a :class:`~prefixkv.bench.model_shapes.Shape` as one GGUF file
(matrices in Q8_0, Q4_0 or Q4_1; norms and biases F32), with SmolLM2's tokenizer metadata
copied from its GGUF. Tensors are generated, quantised and written one at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from prefixkv.bench.model_shapes import CONTEXT, VOCAB, Shape, TensorSpec, tensor_values

GGML_TYPES = {"q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1"}
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


def _qtype(spec: TensorSpec, weights: str) -> Any:
    from gguf import GGMLQuantizationType

    kind = GGML_TYPES[weights] if len(spec.shape) == 2 else "F32"
    return GGMLQuantizationType[kind]


def _quantized(values: np.ndarray, qtype: Any) -> np.ndarray:
    """``values`` (rows, cols) float32 as GGML ``qtype`` blocks (rows, bytes a row), quantised
    _CHUNK_ROWS rows at a time; a 1-D tensor is returned as it is (F32)."""
    from gguf.quants import quantize

    if values.ndim == 1:
        return values
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
    ``weights`` (a key of :data:`GGML_TYPES`), values from
    :func:`~prefixkv.bench.model_shapes.tensor_values`. Holds one tensor (float32, plus its
    quantised copy) at a time. Raises KeyError for an unknown ``weights``."""
    from gguf import GGUFWriter
    from gguf.quants import quant_shape_to_byte_shape

    qtypes = [_qtype(spec, weights) for spec in specs]
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
        writer.write_tensor_data(_quantized(tensor_values(spec, seed, index), qtype))
    writer.close()

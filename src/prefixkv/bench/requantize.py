"""A GGUF file written again with its matrices in another format: a real model (SmolLM2) at
each format prefixkv keeps packed, for ``prefixkv bench formats``.

Every matrix is de-quantized from the source's blocks (gguf-py) and quantized to the target
as :mod:`prefixkv.bench.model_gguf` quantizes a random model (Q8_0 / Q4_0 / Q4_1 by gguf-py,
the K mixes by llama.cpp's per-tensor rule and our K quantizer, with llama.cpp's fallback for
rows that are not a multiple of 256), except that the head (the tied token embedding) takes
llama.cpp's type for it in a plain 4-bit file, Q6_K (Q8_0 for rows of another length, as
SmolLM2's own Q4_1 file stores it); 1-D tensors (norms) and every metadata key but the
file type are copied as they are. The values start from the source's, so a re-quantized
file differs from the source by the target's rounding of those values: the error the format
adds, not the error from the original float weights (which a quantized source no longer has).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from prefixkv.bench.model_gguf import GGML_TYPES, GGUF_WEIGHTS, quantized, tensor_type
from prefixkv.bench.model_kquants import SUPER

_SKIPPED = ("GGUF.", "general.architecture", "general.file_type")  # the writer's own keys


def requantize(source: Path, out: Path, weights: str) -> Path:
    """Write ``source``'s model to ``out`` with matrices in ``weights`` (one of
    :data:`~prefixkv.bench.model_gguf.GGUF_WEIGHTS`); returns ``out``. Holds one tensor
    (float32, plus its quantized copy) at a time. ValueError for an unknown ``weights``."""
    from gguf import GGUFReader, GGUFWriter
    from gguf.quants import dequantize, quant_shape_to_byte_shape

    if weights not in GGUF_WEIGHTS:
        raise ValueError(f"weights {weights!r}: one of {', '.join(GGUF_WEIGHTS)}")
    reader = GGUFReader(str(source))
    arch = str(reader.fields["general.architecture"].contents())
    layers = int(reader.fields[f"{arch}.block_count"].contents())
    writer = GGUFWriter(str(out), arch)
    _copy_fields(writer, reader)
    # GGUF lists a matrix's shape columns first; numpy's (rows, columns) is the reverse
    shapes = [tuple(int(d) for d in reversed(t.shape)) for t in reader.tensors]
    names = [t.name for t in reader.tensors]
    head = "output.weight" if "output.weight" in names else "token_embd.weight"  # tied
    types = [
        _head_type(shape, weights) if name == head and weights in GGML_TYPES else
        tensor_type(name, shape, weights, layers)
        for name, shape in zip(names, shapes, strict=True)
    ]  # fmt: skip
    for tensor, shape, qtype in zip(reader.tensors, shapes, types, strict=True):
        if len(shape) == 1:
            writer.add_tensor_info(tensor.name, shape, np.dtype(np.float32), 4 * shape[0])
        else:
            byte_shape = quant_shape_to_byte_shape(shape, qtype)
            nbytes = int(np.prod(byte_shape))
            writer.add_tensor_info(tensor.name, byte_shape, np.dtype(np.uint8), nbytes, qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor, shape, qtype in zip(reader.tensors, shapes, types, strict=True):
        values = dequantize(tensor.data, tensor.tensor_type).astype(np.float32).reshape(shape)
        writer.write_tensor_data(quantized(values, qtype))
    writer.close()
    return out


def _head_type(shape: tuple[int, ...], weights: str) -> Any:
    """llama.cpp's type for the head (``output``, or a tied model's ``token_embd``) in a
    plain Q4_0 / Q4_1 file: Q6_K, or Q8_0 where its rows are not a multiple of 256 (Q6_K's
    super-block); a Q8_0 file keeps it Q8_0."""
    from gguf import GGMLQuantizationType

    if weights == "q8_0" or shape[1] % SUPER:
        return GGMLQuantizationType.Q8_0
    return GGMLQuantizationType.Q6_K


def _copy_fields(writer: Any, reader: Any) -> None:
    """Every key of ``reader`` but the writer's own, with its type."""
    from gguf import GGUFValueType

    for key, field in reader.fields.items():
        if key.startswith(_SKIPPED):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)

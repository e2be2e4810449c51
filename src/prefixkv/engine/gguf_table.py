"""A GGUF file's tensor table, read without parsing its metadata values.

``gguf.GGUFReader`` builds an object for every metadata value, the tokenizer's tens of
thousands of tokens and merges included, which costs about as much as loading a small model
(docs/decisions.md). :func:`read_table` walks the metadata only to skip it (keeping the
architecture name and the data alignment) and maps the tensor data, read-only; its table
equals GGUFReader's (tests/engine/test_gguf_table.py).

Layout read (GGUF versions 2 and 3, little-endian, as the GGUF spec in ggml's docs/gguf.md):
magic ``GGUF``, u32 version, u64 tensor count, u64 metadata count; each metadata entry is a
string key, a u32 value type and the value; each tensor entry a string name, u32 dimension
count, u64 dims (innermost first), u32 GGML type and a u64 offset from the data start, which
is the end of the table rounded up to ``general.alignment`` (32 unless given). A string is a
u64 length and its bytes; an array a u32 element type, a u64 count and the elements.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["TensorEntry", "TensorTable", "read_table"]

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_STRING, _ARRAY = 8, 9  # value types with a length; every other type has a fixed size
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_VERSIONS = (2, 3)
_DEFAULT_ALIGNMENT = 32


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of the file."""

    name: str
    ggml_type: int  # a gguf.GGMLQuantizationType value
    dims: tuple[int, ...]  # GGML order: dims[0] is the innermost (a matrix's in_features)
    data: np.ndarray  # uint8 [n_bytes], a read-only view of the mapped file


@dataclass(frozen=True)
class TensorTable:
    """The file's architecture name (``general.architecture``) and tensors, in file order."""

    architecture: str
    tensors: tuple[TensorEntry, ...]


class _Cursor:
    """Reads little-endian fields from ``buf`` at a moving offset (struct.error past the end,
    which :func:`read_table` turns into ValueError)."""

    def __init__(self, buf: memoryview, offset: int) -> None:
        self.buf, self.offset = buf, offset

    def u32(self) -> int:
        value: int = _U32.unpack_from(self.buf, self.offset)[0]
        self.offset += 4
        return value

    def u64(self) -> int:
        value: int = _U64.unpack_from(self.buf, self.offset)[0]
        self.offset += 8
        return value

    def string(self) -> bytes:
        n = self.u64()
        self.offset += n
        if self.offset > len(self.buf):
            raise ValueError("string runs past the end of the file")
        return bytes(self.buf[self.offset - n : self.offset])

    def skip(self, value_type: int) -> None:
        """Moves past one value of ``value_type``."""
        if value_type in _FIXED:
            self.offset += _FIXED[value_type]
        elif value_type == _STRING:
            n = self.u64()  # read first: ``offset += self.u64()`` would drop the length's 8
            self.offset += n
        elif value_type == _ARRAY:
            element_type, count = self.u32(), self.u64()
            if element_type in _FIXED:
                self.offset += count * _FIXED[element_type]
            else:
                for _ in range(count):
                    self.skip(element_type)
        else:
            raise ValueError(f"unknown GGUF value type {value_type} at byte {self.offset}")


def _metadata(cursor: _Cursor, count: int) -> tuple[str, int]:
    """Skips ``count`` metadata entries; returns (architecture, alignment) from them."""
    architecture, alignment = "", _DEFAULT_ALIGNMENT
    for _ in range(count):
        key, value_type = cursor.string(), cursor.u32()
        if key == b"general.architecture" and value_type == _STRING:
            architecture = cursor.string().decode("utf-8")
        elif key == b"general.alignment" and value_type == 4:  # uint32
            alignment = cursor.u32()
        else:
            cursor.skip(value_type)
    if alignment <= 0 or alignment & (alignment - 1):
        raise ValueError(f"general.alignment {alignment} is not a power of two")
    return architecture, alignment


def read_table(path: Path | str) -> TensorTable:
    """Maps ``path`` read-only and returns its tensor table (the views keep the file mapped).

    Raises OSError if it cannot be read, ValueError if it is not a GGUF this reads (bad
    magic, another version or byte order, a table past the end of the file)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    buf = np.memmap(path, dtype=np.uint8, mode="r")
    if bytes(buf[:4]) != b"GGUF":
        raise ValueError(f"{path}: GGUF magic invalid")
    cursor = _Cursor(buf.data, 4)  # memoryview: struct reads it in place
    try:
        version = cursor.u32()
        if version not in _VERSIONS:
            raise ValueError(f"{path}: GGUF version {version} (read: {_VERSIONS}, little-endian)")
        n_tensors, n_metadata = cursor.u64(), cursor.u64()
        architecture, alignment = _metadata(cursor, n_metadata)
        raw = []
        for _ in range(n_tensors):
            name, n_dims = cursor.string().decode("utf-8"), cursor.u32()
            dims = tuple(cursor.u64() for _ in range(n_dims))
            raw.append((name, dims, cursor.u32(), cursor.u64()))
    except struct.error as exc:
        raise ValueError(f"{path}: tensor table runs past the end of the file") from exc
    start = -(-cursor.offset // alignment) * alignment
    tensors = []
    for name, dims, ggml_type, offset in raw:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        n_bytes = int(np.prod(dims, dtype=np.int64)) // block * type_size
        begin = start + offset
        if begin + n_bytes > len(buf):
            raise ValueError(f"{path}: tensor {name} runs past the end of the file")
        data = np.asarray(buf[begin : begin + n_bytes])  # a plain view, no memmap subclass
        tensors.append(TensorEntry(name, ggml_type, dims, data))
    return TensorTable(architecture, tuple(tensors))

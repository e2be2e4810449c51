"""Tests for prefixkv.engine.gguf_table: the tensor table equals gguf.GGUFReader's."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader

from prefixkv.engine.gguf_table import TensorTable, read_table

from .tiny_gguf import write_tiny_gguf


def _assert_same_as_gguf_reader(path: Path, table: TensorTable) -> None:
    reader = GGUFReader(str(path))
    field = reader.fields["general.architecture"]
    assert table.architecture == bytes(field.parts[field.data[0]]).decode()
    assert [t.name for t in table.tensors] == [t.name for t in reader.tensors]
    for ours, theirs in zip(table.tensors, reader.tensors, strict=True):
        assert ours.ggml_type == int(theirs.tensor_type), ours.name
        assert ours.dims == tuple(int(d) for d in theirs.shape), ours.name
        assert ours.data.dtype == np.uint8 and not ours.data.flags.writeable
        assert np.array_equal(ours.data, np.asarray(theirs.data).view(np.uint8).reshape(-1))


@pytest.mark.parametrize(
    ("arch", "types"),
    [
        ("llama", {}),
        ("qwen2", {"blk.0.attn_q.weight": "F16", "blk.1.ffn_up.weight": "BF16"}),
        ("llama", {"token_embd.weight": "Q4_0", "blk.0.ffn_down.weight": "Q5_1"}),
    ],
)
def test_table_equals_gguf_readers(arch: str, types: dict[str, str], tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path, arch=arch, matrix_type="Q4_1", types=types, untied=True)
    _assert_same_as_gguf_reader(path, read_table(path))


def test_alignment_is_honoured(tmp_path: Path) -> None:
    from gguf import GGUFWriter

    path = tmp_path / "aligned.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_custom_alignment(256)
    w.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc"])  # arrays of strings are skipped
    for i in range(3):
        w.add_tensor(f"t{i}", np.full((i + 1, 8), i, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    table = read_table(path)
    _assert_same_as_gguf_reader(path, table)
    assert [t.data.view(np.float32).tolist() for t in table.tensors] == [
        [float(i)] * 8 * (i + 1) for i in range(3)
    ]


def test_not_gguf_wrong_version_and_truncated_files_raise(tmp_path: Path) -> None:
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    data = path.read_bytes()
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"PK\x03\x04" + data[4:])
    with pytest.raises(ValueError, match="magic"):
        read_table(bogus)
    bogus.write_bytes(data[:4] + struct.pack("<I", 1) + data[8:])
    with pytest.raises(ValueError, match="version 1"):
        read_table(bogus)
    bogus.write_bytes(data[:2000])  # cut inside the tokenizer's metadata
    with pytest.raises(ValueError, match="past the end"):
        read_table(bogus)
    bogus.write_bytes(data[:-100])  # the last tensor's data cut short
    with pytest.raises(ValueError, match=r"tensor blk\.1\.ffn_down\.weight runs past the end"):
        read_table(bogus)


@pytest.mark.smollm2
def test_smollm2_table_equals_gguf_readers() -> None:
    from prefixkv.engine.loader import resolve_model

    path = resolve_model("smollm2")
    table = read_table(path)
    assert table.architecture == "llama" and len(table.tensors) == 272
    _assert_same_as_gguf_reader(path, table)

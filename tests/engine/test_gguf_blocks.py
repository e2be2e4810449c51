"""Tests for prefixkv.engine.gguf_blocks: each Linear's raw GGUF rows, verified bit for bit.

Tiny Llama and Qwen2 files are written here (tiny_gguf.py) in every kept GGML type and loaded
through the engine's loader; the real SmolLM2 file is the ``smollm2``-marked test at the end.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize
from hypothesis import given
from hypothesis import strategies as st
from transformers import modeling_gguf_pytorch_utils as gguf_utils

from prefixkv.engine import gguf_blocks
from prefixkv.engine.gguf_blocks import RawWeight, raw_weights, scan_raw_weights
from prefixkv.engine.loader import LoadedModel, load_model

from .tiny_gguf import LAYERS, write_tiny_gguf

# bytes per weight of each kept format, from the block layouts (Q8_0: fp16 d + 32 int8 per
# 32 weights; Q4_0: fp16 d + 16 bytes of nibbles; Q4_1: fp16 d, fp16 m + 16 bytes)
BYTES_PER_WEIGHT = {"q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32, "f16": 2, "bf16": 2}
BYTES_PER_WEIGHT |= {"f32": 4}
GGML_TYPES = ["Q8_0", "Q4_0", "Q4_1", "F16", "BF16", "F32"]
PROJ = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj"}
PROJ |= {"attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj"}
PROJ |= {"ffn_down": "mlp.down_proj"}
LINEARS = {f"model.layers.{i}.{p}" for i in range(LAYERS) for p in PROJ.values()} | {"lm_head"}
EMBEDDING = "model.embed_tokens"  # a plain nn.Embedding: scanned with the linear layers
SCANNED = LINEARS | {EMBEDDING}


def _tiny(tmp: Path, name: str, dtype: torch.dtype | None = None, **kw: Any) -> LoadedModel:
    """Writes tiny_gguf's model with ``kw`` to ``tmp/name.gguf`` and loads it as prefixkv does."""
    path = tmp / f"{name}.gguf"
    if not path.exists():
        write_tiny_gguf(path, **kw)
    return load_model(str(path), cache_dir=tmp / "cache", dtype=dtype)


def _file_rows(path: Path, tensor_name: str) -> np.ndarray:
    """The tensor's bytes as the file stores them: uint8 [rows, row_bytes]."""
    tensor = next(t for t in GGUFReader(str(path)).tensors if t.name == tensor_name)
    return np.asarray(tensor.data).view(np.uint8).reshape(int(tensor.shape[1]), -1)


def _assert_exact(model: torch.nn.Module, name: str, raw: RawWeight) -> None:
    """The test's own check: raw's rows de-quantized equal the module's weight bit for bit."""
    weight = model.get_submodule(name).weight.detach().float().numpy()
    got = dequantize(raw.rows, GGMLQuantizationType[raw.format.upper()])
    assert got.dtype == np.float32 and got.shape == weight.shape, name
    assert np.array_equal(got.view(np.int32), weight.view(np.int32)), name


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("ggml_type", GGML_TYPES)
def test_every_linear_found_in_its_format_and_exact(
    arch: str, ggml_type: str, tmp_path: Path
) -> None:
    lm = _tiny(tmp_path, f"{arch}-{ggml_type}", arch=arch, matrix_type=ggml_type)
    scan = scan_raw_weights(lm.model, lm.source)
    assert dict(scan.left_out) == {} and set(scan.weights) == SCANNED
    for name, raw in scan.weights.items():
        out_features, in_features = lm.model.get_submodule(name).weight.shape
        assert raw.format == ggml_type.lower() and raw.in_features == in_features
        assert raw.rows.dtype == np.uint8 and raw.rows.flags.c_contiguous
        assert raw.rows.shape == (out_features, in_features * BYTES_PER_WEIGHT[raw.format])
        _assert_exact(lm.model, name, raw)
    # tied: lm_head's rows are token_embd's, byte for byte and in the file's order
    assert np.array_equal(scan.weights["lm_head"].rows, _file_rows(lm.source, "token_embd.weight"))
    assert scan.weights[EMBEDDING] is scan.weights["lm_head"]  # one weight: verified once


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_rows_are_the_files_bytes_reordered_only_where_transformers_reorders(
    arch: str, tmp_path: Path
) -> None:
    lm = _tiny(tmp_path, arch, arch=arch, matrix_type="Q4_1")
    found = raw_weights(lm.model, lm.source)
    for i in range(LAYERS):
        for part, proj in PROJ.items():
            rows = found[f"model.layers.{i}.{proj}"].rows
            file_rows = _file_rows(lm.source, f"blk.{i}.{part}.weight")
            # Llama's q/k are stored rotary-permuted (transformers undoes it): same rows,
            # another order; every other matrix, and every Qwen2 one, is in file order
            permuted = arch == "llama" and part in ("attn_q", "attn_k")
            assert np.array_equal(rows, file_rows) != permuted, (i, part)
            key = [r.tobytes() for r in rows]
            assert sorted(key) == sorted(r.tobytes() for r in file_rows)


def test_wrong_row_order_is_caught_as_a_mismatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lm = _tiny(tmp_path, "llama", matrix_type="Q8_0")

    def file_order(result_weights: object, n_rows: int) -> np.ndarray:
        return np.arange(n_rows)

    monkeypatch.setattr(gguf_blocks, "_row_order", file_order)
    scan = scan_raw_weights(lm.model, lm.source)
    qk = {f"model.layers.{i}.self_attn.{p}_proj" for i in range(LAYERS) for p in "qk"}
    assert set(scan.left_out) == qk
    assert {o.reason for o in scan.left_out.values()} == {"mismatch"}
    assert set(scan.weights) == SCANNED - qk


def test_weight_changed_after_loading_is_left_out_and_named(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lm = _tiny(tmp_path, "llama", matrix_type="Q4_0")
    up = lm.model.get_submodule("model.layers.1.mlp.up_proj").weight
    head = lm.model.get_submodule("lm_head").weight
    with torch.no_grad():
        up[3, 5] = torch.nextafter(up[3, 5], torch.tensor(1.0))  # one ulp
        head[7, 0] = -head[7, 0]
    with caplog.at_level(logging.WARNING, logger="prefixkv.engine.gguf_blocks"):
        found = raw_weights(lm.model, lm.source)
    tampered = {"model.layers.1.mlp.up_proj", "lm_head", EMBEDDING}  # the head is tied
    assert set(found) == SCANNED - tampered
    (record,) = caplog.records
    assert "3 of 16" in record.getMessage()
    assert all(f"{n} (mismatch" in record.getMessage() for n in tampered)


def test_format_not_kept_is_reported_not_returned(tmp_path: Path) -> None:
    types = {"blk.1.ffn_up.weight": "Q5_0", "token_embd.weight": "Q5_1"}
    lm = _tiny(tmp_path, "mixed", matrix_type="Q8_0", types=types)
    scan = scan_raw_weights(lm.model, lm.source)
    assert set(scan.left_out) == {"model.layers.1.mlp.up_proj", "lm_head", EMBEDDING}
    up, head = scan.left_out["model.layers.1.mlp.up_proj"], scan.left_out["lm_head"]
    assert up.reason == head.reason == "format"
    assert "blk.1.ffn_up.weight (Q5_0" in up.detail and "token_embd.weight (Q5_1" in head.detail
    assert {r.format for r in scan.weights.values()} == {"q8_0"}


def test_untied_lm_head_reads_output_weight(tmp_path: Path) -> None:
    lm = _tiny(tmp_path, "untied", matrix_type="Q4_1", untied=True)
    scan = scan_raw_weights(lm.model, lm.source)
    assert dict(scan.left_out) == {} and set(scan.weights) == SCANNED
    head = scan.weights["lm_head"].rows
    assert np.array_equal(head, _file_rows(lm.source, "output.weight"))
    assert not np.array_equal(head, _file_rows(lm.source, "token_embd.weight"))
    embedding = scan.weights[EMBEDDING].rows
    assert np.array_equal(embedding, _file_rows(lm.source, "token_embd.weight"))


def test_linear_without_a_file_tensor_is_not_found(tmp_path: Path) -> None:
    lm = _tiny(tmp_path, "llama", matrix_type="Q8_0")
    lm.model.add_module("extra", torch.nn.Linear(64, 8))
    scan = scan_raw_weights(lm.model, lm.source)
    assert set(scan.left_out) == {"extra"} and scan.left_out["extra"].reason == "not_found"
    assert set(scan.weights) == SCANNED


def test_processing_beyond_a_row_reordering_is_left_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class ScalesValues(gguf_utils.LlamaTensorProcessor):  # type: ignore[misc]
        def process(self, weights: Any, name: str, **kwargs: Any) -> Any:
            result = super().process(weights, name, **kwargs)
            scaled = result.weights * 2 if ".attn_v." in name else result.weights
            return gguf_utils.GGUFTensor(scaled, result.name, {})

    lm = _tiny(tmp_path, "llama", matrix_type="Q8_0")
    monkeypatch.setitem(gguf_utils.TENSOR_PROCESSORS, "llama", ScalesValues)
    scan = scan_raw_weights(lm.model, lm.source)
    v = {f"model.layers.{i}.self_attn.v_proj" for i in range(LAYERS)}
    assert set(scan.left_out) == v
    assert {o.reason for o in scan.left_out.values()} == {"not_row_permutation"}


def test_weights_rounded_by_a_narrower_dtype_are_mismatches(tmp_path: Path) -> None:
    # a bf16 file loaded in bf16 is exact; Q8_0's d*q products do not fit bf16's 8 bits
    exact = _tiny(tmp_path, "bf16", torch.bfloat16, matrix_type="BF16")
    assert set(scan_raw_weights(exact.model, exact.source).weights) == SCANNED
    rounded = _tiny(tmp_path, "q8", torch.bfloat16, matrix_type="Q8_0")
    scan = scan_raw_weights(rounded.model, rounded.source)
    assert dict(scan.weights) == {} and set(scan.left_out) == SCANNED
    assert {o.reason for o in scan.left_out.values()} == {"mismatch"}


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_names_agree_with_transformers_own_weights_map(arch: str, tmp_path: Path) -> None:
    from transformers.modeling_gguf_pytorch_utils import (
        TENSOR_PROCESSORS,
        TensorProcessor,
        get_gguf_hf_weights_map,
    )

    lm = _tiny(tmp_path, arch, arch=arch, matrix_type="Q8_0", untied=True)
    processor = TENSOR_PROCESSORS.get(arch, TensorProcessor)(config=lm.model.config.to_dict())
    theirs = get_gguf_hf_weights_map(lm.model, processor)
    ours = gguf_blocks._key_map(lm.model, arch, processor)
    assert len(ours) >= 1 + LAYERS * (len(PROJ) + 2) + 2  # matrices, norms, embedding, head
    assert ours == theirs


def test_a_file_that_is_not_gguf_raises(tmp_path: Path) -> None:
    lm = _tiny(tmp_path, "llama", matrix_type="Q8_0")
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"PK\x03\x04" + bytes(64))
    with pytest.raises(ValueError, match="GGUF magic"):
        scan_raw_weights(lm.model, bogus)


@given(st.permutations(list(range(40))), st.integers(0, 39), st.sampled_from([-1.0, 0.5, 40.0]))
def test_row_order_accepts_permutations_only(order: list[int], at: int, bad: float) -> None:
    probe = np.array(order, dtype=np.float64).reshape(-1, 1)
    found = gguf_blocks._row_order(probe, len(order))
    assert found is not None and found.tolist() == order
    broken = probe.copy()
    broken[at, 0] = bad  # out of range, fractional, or a repeated row
    assert gguf_blocks._row_order(broken, len(order)) is None
    assert gguf_blocks._row_order(probe.T, len(order)) is None  # not a column
    assert gguf_blocks._row_order(probe[:-1], len(order)) is None


@pytest.mark.smollm2
def test_smollm2_every_linear_found_and_verified() -> None:
    lm = load_model("smollm2")
    scan = scan_raw_weights(lm.model, lm.source)
    linears = {n for n, m in lm.model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert len(linears) == 211 and dict(scan.left_out) == {}
    assert set(scan.weights) == linears | {EMBEDDING}
    head = scan.weights["lm_head"]  # tied to the Q8_0 token embedding
    assert head.format == "q8_0" and head.rows.shape == (49152, 576 // 32 * 34)
    assert np.array_equal(head.rows, _file_rows(lm.source, "token_embd.weight"))
    assert scan.weights[EMBEDDING] is head
    assert {r.format for n, r in scan.weights.items() if n not in ("lm_head", EMBEDDING)} == {
        "q4_1"
    }
    down = scan.weights["model.layers.29.mlp.down_proj"]
    assert down.rows.shape == (576, 1536 // 32 * 20) and down.in_features == 1536
    q = scan.weights["model.layers.0.self_attn.q_proj"].rows
    assert not np.array_equal(q, _file_rows(lm.source, "blk.0.attn_q.weight"))  # rotary order
    # the one name table gives what transformers' own map (a table per submodule) gives
    processor = gguf_utils.LlamaTensorProcessor(config=lm.model.config.to_dict())
    theirs = gguf_utils.get_gguf_hf_weights_map(lm.model, processor)
    assert gguf_blocks._key_map(lm.model, "llama", processor) == theirs

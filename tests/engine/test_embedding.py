"""The token embedding held as the GGUF file's rows (``--weights auto``) or bf16: each lookup
de-quantizes only the rows it gathers, and the logits are those of ``fp32`` bit for bit.
The tiny models here have their own head (``untied=True``): a tied head's embedding reads
the head's weight instead (tests/engine/test_tied_embedding.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize
from hypothesis import given, settings
from hypothesis import strategies as st

from prefixkv import Engine
from prefixkv.engine import embedding as embedding_module
from prefixkv.engine.embedding import RowEmbedding, dequantize_rows, install_embedding
from prefixkv.engine.tied_embedding import HeadEmbedding

from .conftest import with_own_cache
from .test_weights import PROMPTS, _bits, _engine, _replies

VOCAB_BYTES = 300 * 64 * 4  # the tiny model's table in float32


def _table(engine: Engine) -> torch.nn.Module:
    table: torch.nn.Module = engine.model.get_input_embeddings()
    return table


@pytest.mark.parametrize(
    ("arch", "ggml_type"),
    [("llama", "Q8_0"), ("llama", "Q4_0"), ("llama", "Q4_1"), ("qwen2", "Q4_1"), ("llama", "BF16")],
)
def test_the_table_is_held_as_the_files_rows_and_logits_equal_fp32(
    arch: str, ggml_type: str, tmp_path: Path
) -> None:
    kept = _engine(tmp_path, arch, "auto", arch=arch, matrix_type=ggml_type, untied=True)
    plain = _engine(tmp_path, arch, "fp32")
    table = _table(kept)
    assert isinstance(table, RowEmbedding) and table.format == ggml_type.lower()
    assert table.rows.nbytes < VOCAB_BYTES / 1.9  # bf16 half, the others under a third
    assert type(_table(plain)) is torch.nn.Embedding
    for prompt in PROMPTS:
        assert torch.equal(_bits(kept, prompt), _bits(plain, prompt)), prompt
    alone, batched = _replies(kept)
    assert alone == batched == _replies(plain)[0]


def test_the_lookup_gives_the_loaded_rows_for_any_id_shape(tmp_path: Path) -> None:
    kept = _engine(tmp_path, "q4", "auto", matrix_type="Q4_0")
    plain = _table(_engine(tmp_path, "q4", "fp32"))
    ids = torch.tensor([[5, 0, 299], [7, 7, 1]])
    got = _table(kept)(ids)
    assert got.shape == (2, 3, 64) and got.dtype == torch.float32
    assert torch.equal(got.view(torch.int32), plain(ids).view(torch.int32))
    with pytest.raises(IndexError):
        _table(kept)(torch.tensor([300]))


def test_a_table_that_differs_from_ggufs_dequantization_stays_fp32(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = embedding_module.dequantize_rows

    def corrupted(format: str, rows: torch.Tensor, features: int) -> torch.Tensor:
        values = real(format, rows, features)
        values.view(torch.int32)[-1, -1] ^= 1  # one ulp of the last row's last weight
        return values

    monkeypatch.setattr(embedding_module, "dequantize_rows", corrupted)
    with caplog.at_level(logging.WARNING, logger="prefixkv.engine"):
        kept = _engine(tmp_path, "bad", "auto", matrix_type="Q8_0", untied=True)
    assert type(_table(kept)) is torch.nn.Embedding
    assert any("q8_0 differs from the values it holds" in r.getMessage() for r in caplog.records)
    monkeypatch.undo()
    plain = _engine(tmp_path, "bad", "fp32")
    for prompt in PROMPTS:
        assert torch.equal(_bits(kept, prompt), _bits(plain, prompt)), prompt


def test_bf16_rounds_the_table(tmp_path: Path) -> None:
    rounded = _engine(tmp_path, "round", "bf16", matrix_type="Q8_0", untied=True)
    plain = _table(_engine(tmp_path, "round", "fp32"))
    table = _table(rounded)
    assert isinstance(table, RowEmbedding) and table.format == "bf16"
    assert torch.equal(table.rows, plain.weight.detach().to(torch.bfloat16))
    alone, batched = _replies(rounded)
    assert alone == batched


def test_a_head_still_reading_the_tied_weight_keeps_it_fp32(tmp_path: Path) -> None:
    # PyTorch's linear kernel keeps the tied lm_head on the embedding's own weight
    kept = _engine(tmp_path, "torch", "auto", matrix_type="Q8_0", linear_kernel="torch")
    assert type(_table(kept)) is torch.nn.Embedding
    assert kept.model.lm_head.weight is _table(kept).weight


def test_an_untied_head_keeps_its_own_rows(tmp_path: Path) -> None:
    kept = _engine(tmp_path, "untied", "auto", matrix_type="Q4_1", untied=True)
    plain = _engine(tmp_path, "untied", "fp32", matrix_type="Q4_1", untied=True)
    assert isinstance(_table(kept), RowEmbedding)
    for prompt in PROMPTS:
        assert torch.equal(_bits(kept, prompt), _bits(plain, prompt)), prompt


def test_the_state_dict_holds_the_rows_not_the_float_table(tmp_path: Path) -> None:
    state = _engine(tmp_path, "sd", "auto", matrix_type="Q8_0", untied=True).model.state_dict()
    assert state["model.embed_tokens.rows"].dtype == torch.uint8
    assert "model.embed_tokens.weight" not in state


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from(["Q8_0", "Q4_0", "Q4_1"]),
    st.integers(1, 9),
    st.integers(1, 4),
    st.integers(0, 2**32 - 1),
    st.sampled_from([1e-3, 1.0, 1e3]),  # min and d stay inside fp16,
)
def test_rows_dequantize_as_ggufs_reference(
    ggml_type: str, n: int, blocks: int, seed: int, scale: float
) -> None:
    qtype = GGMLQuantizationType[ggml_type]
    values = np.random.default_rng(seed).standard_normal((n, 32 * blocks)).astype(np.float32)
    rows = quantize(values * np.float32(scale), qtype)
    want = dequantize(rows, qtype)
    got = dequantize_rows(ggml_type.lower(), torch.from_numpy(rows.copy()), 32 * blocks)
    assert np.array_equal(got.numpy().view(np.int32), want.view(np.int32))


def test_unknown_formats_are_refused() -> None:
    with pytest.raises(ValueError, match="one of"):
        RowEmbedding("q5_0", torch.zeros(2, 22, dtype=torch.uint8), 32)
    with pytest.raises(ValueError, match="one of"):
        dequantize_rows("f16", torch.zeros(2, 64, dtype=torch.uint8), 32)


class _Model(torch.nn.Module):
    """The two calls install_embedding makes on a transformers model, around ``table``."""

    def __init__(self, table: torch.nn.Module | None) -> None:
        super().__init__()
        self.table = table

    def get_input_embeddings(self) -> torch.nn.Module:
        if self.table is None:
            raise NotImplementedError  # as transformers for a model without one
        return self.table

    def set_input_embeddings(self, table: torch.nn.Module) -> None:
        self.table = table


class _Scaled(torch.nn.Embedding):
    """Like Gemma's: more than a lookup."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids) * 8.0


def test_only_a_plain_float32_lookup_is_replaced() -> None:
    exact = torch.randn(10, 32).to(torch.bfloat16).to(torch.float32)  # bf16-exact values
    plain = _Model(torch.nn.Embedding.from_pretrained(exact))
    assert install_embedding(plain, "auto", {}) == "bf16"
    assert isinstance(plain.table, RowEmbedding)
    scaled = _Model(_Scaled.from_pretrained(exact))
    assert install_embedding(scaled, "auto", {}) == "f32" and type(scaled.table) is _Scaled
    assert install_embedding(_Model(None), "auto", {}) == "f32"
    rounding = _Model(torch.nn.Embedding.from_pretrained(exact + 1e-3))  # not bf16-exact
    assert install_embedding(rounding, "auto", {}) == "f32"
    assert install_embedding(rounding, "fp32", {}) == "f32"
    assert install_embedding(rounding, "bf16", {}) == "bf16"


@pytest.mark.smollm2
def test_smollm2_reads_its_q8_0_table_out_of_the_tied_head_and_logits_equal_fp32(
    smollm2_engine: Engine,
) -> None:
    kept = with_own_cache(smollm2_engine, 1 << 24)  # weights="auto"
    table = _table(kept)
    assert isinstance(table, HeadEmbedding) and table.format == "q8_0"
    head = kept.model.lm_head.packed  # the table's one copy: the file's bytes, reordered
    assert head.numel() == -(-49152 // 64) * 64 * 576 // 32 * 34
    assert not any(name.startswith("model.embed_tokens") for name in kept.model.state_dict())
    plain = Engine.from_pretrained("smollm2", cache_bytes=1 << 24, weights="fp32")
    for prompt in PROMPTS[:2]:
        assert torch.equal(_bits(kept, prompt), _bits(plain, prompt)), prompt


@pytest.mark.parametrize("kind", ["Q4_K", "Q5_K", "Q6_K"])
def test_k_quant_rows_are_gguf_py_s_rows(kind: str) -> None:
    from prefixkv.bench.model_kquants import quantize_k

    values = np.random.default_rng(0).standard_normal((7, 512)).astype(np.float32) * 0.02
    rows = quantize_k(values, kind)
    want = torch.from_numpy(dequantize(rows, GGMLQuantizationType[kind]))
    got = dequantize_rows(kind.lower(), torch.from_numpy(rows), 512)
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))

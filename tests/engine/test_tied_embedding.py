"""A tied head's token embedding read out of the head's packed weight: the table held once,
every lookup and every logit the same bits as the fp32 path's, under every ``--weights``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from prefixkv import Engine
from prefixkv.engine import tied_embedding
from prefixkv.engine.embedding import RowEmbedding
from prefixkv.engine.tied_embedding import HeadEmbedding

from .test_weights import PROMPTS, _bits, _engine, _replies


def _table(engine: Engine) -> torch.nn.Module:
    table: torch.nn.Module = engine.model.get_input_embeddings()
    return table


def _plain_rows(tmp_path: Path, name: str, **kw: object) -> torch.Tensor:
    """The whole table as transformers loads it in float32: PyTorch's linear kernel keeps
    the tied head on the embedding's own ``nn.Embedding`` weight."""
    engine = _engine(tmp_path, name, "fp32", linear_kernel="torch", **kw)
    table = _table(engine)
    assert type(table) is torch.nn.Embedding
    return table.weight.detach()


@pytest.mark.parametrize("ggml_type", ["Q8_0", "Q4_0", "Q4_1", "BF16"])
def test_the_embedding_reads_the_heads_blocks_and_logits_equal_fp32(
    ggml_type: str, tmp_path: Path
) -> None:
    kept = _engine(tmp_path, "tied", "auto", matrix_type=ggml_type)
    plain = _engine(tmp_path, "tied", "fp32")
    table = _table(kept)
    assert isinstance(table, HeadEmbedding) and table.format == ggml_type.lower()
    assert kept.model.lm_head.format == table.format
    state = kept.model.state_dict()  # one copy: the head's blocks, nothing of the embedding's
    assert not any(name.startswith("model.embed_tokens") for name in state)
    assert list(table.buffers()) == [] and list(table.parameters()) == []
    ids = torch.arange(300)
    want = _plain_rows(tmp_path, "tied")
    assert torch.equal(table(ids).view(torch.int32), want.view(torch.int32))
    for prompt in PROMPTS:
        assert torch.equal(_bits(kept, prompt), _bits(plain, prompt)), prompt
    alone, batched = _replies(kept)
    assert alone == batched == _replies(plain)[0]


@pytest.mark.parametrize(("weights", "format"), [("fp32", "f32"), ("bf16", "bf16")])
def test_every_weights_setting_shares_the_table_it_would_hold(
    weights: str, format: str, tmp_path: Path
) -> None:
    shared = _engine(tmp_path, "tied", weights, matrix_type="Q8_0")
    plain = _plain_rows(tmp_path, "tied", matrix_type="Q8_0")
    want = plain if weights == "fp32" else plain.to(torch.bfloat16).to(torch.float32)
    table = _table(shared)
    assert isinstance(table, HeadEmbedding) and table.format == format
    got = table(torch.arange(300))
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


def test_a_type_no_kernel_reads_is_rounded_alike_in_head_and_table(tmp_path: Path) -> None:
    types = {"token_embd.weight": "F16"}  # auto rounds F16 rows to bf16, head and table
    kept = _engine(tmp_path, "f16", "auto", matrix_type="Q8_0", types=types)
    plain = _plain_rows(tmp_path, "f16", matrix_type="Q8_0", types=types)
    table = _table(kept)
    assert isinstance(table, HeadEmbedding) and table.format == "bf16"
    want = plain.to(torch.bfloat16).to(torch.float32)
    assert torch.equal(table(torch.arange(300)).view(torch.int32), want.view(torch.int32))


def test_head_rows_that_differ_from_the_table_are_not_shared(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = tied_embedding.rows_of

    def corrupted(packed: object, ids: torch.Tensor) -> torch.Tensor:
        values = real(packed, ids)  # type: ignore[arg-type]
        values.view(torch.int32)[-1, -1] ^= 1  # one ulp of the last row's last weight
        return values

    monkeypatch.setattr(tied_embedding, "rows_of", corrupted)
    kept = _engine(tmp_path, "bad", "auto", matrix_type="Q4_1")
    table = _table(kept)
    assert isinstance(table, RowEmbedding) and table.format == "q4_1"  # its own copy
    monkeypatch.undo()
    plain = _engine(tmp_path, "bad", "fp32")
    for prompt in PROMPTS:
        assert torch.equal(_bits(kept, prompt), _bits(plain, prompt)), prompt


def test_the_lookup_refuses_ids_outside_the_vocabulary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="prefixkv.engine"):
        table = _table(_engine(tmp_path, "ids", "auto", matrix_type="Q4_0"))
    assert any("read out of the tied head's q4_0 blocks" in r.getMessage() for r in caplog.records)
    for bad in (300, -1):
        with pytest.raises(IndexError, match=r"ids: each must be in 0\.\.299"):
            table(torch.tensor([[5, bad]]))
    assert table(torch.zeros(0, 3, dtype=torch.int64)).shape == (0, 3, 64)


def test_an_untied_or_unpacked_head_is_not_read(tmp_path: Path) -> None:
    untied = _engine(tmp_path, "untied", "auto", matrix_type="Q4_1", untied=True)
    assert isinstance(_table(untied), RowEmbedding)
    unpacked = _engine(tmp_path, "torch", "auto", matrix_type="Q8_0", linear_kernel="torch")
    assert type(_table(unpacked)) is torch.nn.Embedding

"""A GGUF written again in another format (``prefixkv bench formats``' subjects): the
target's types, the source's metadata, values re-quantized from the source's, and it loads
and answers in the new format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from prefixkv import Engine
from prefixkv.bench.make_model import write_model
from prefixkv.bench.requantize import requantize
from prefixkv.engine.linear import formats_of


@pytest.mark.parametrize(("source", "target"), [("q8_0", "q4_0"), ("q4_1", "q8_0")])
def test_a_requantized_gguf_holds_the_sources_values_in_the_new_format(
    source: str, target: str, tmp_path: Path
) -> None:
    from gguf import GGMLQuantizationType, GGUFReader
    from gguf.quants import dequantize, quantize

    original = write_model(tmp_path / "in", "llama", "tiny", source, seed=5)
    out = requantize(original, tmp_path / f"tiny-{target}.gguf", target)
    before, after = GGUFReader(str(original)), GGUFReader(str(out))
    kept = {k: f.contents() for k, f in before.fields.items() if k != "general.file_type"}
    assert {k: f.contents() for k, f in after.fields.items() if k in kept} == kept
    qtype = GGMLQuantizationType[target.upper()]
    assert [t.name for t in after.tensors] == [t.name for t in before.tensors]
    for old, new in zip(before.tensors, after.tensors, strict=True):
        if len(old.shape) == 1:
            assert new.tensor_type == GGMLQuantizationType.F32
            assert np.array_equal(new.data, old.data), old.name
            continue
        # the tied head as llama.cpp types it: Q6_K, Q8_0 for the tiny model's short rows
        expected = GGMLQuantizationType.Q8_0 if old.name == "token_embd.weight" else qtype
        assert new.tensor_type == expected, old.name
        values = dequantize(old.data, old.tensor_type).astype(np.float32)
        assert np.array_equal(new.data.reshape(-1), quantize(values, expected).reshape(-1))
    engine = Engine.from_pretrained(
        str(out), cache_bytes=1 << 20, block_size=4, cache_dir=tmp_path / "cache", weights="auto"
    )
    head = "" if target == "q8_0" else ", q8_0 1"
    assert formats_of(engine.model) == f"{target} {9 if target == 'q8_0' else 8}{head}"
    assert 1 <= len(engine.generate("hello world", max_tokens=4, temperature=0).token_ids) <= 4


def test_an_unknown_format_is_refused(tmp_path: Path) -> None:
    original = write_model(tmp_path / "in", "llama", "tiny", "q8_0")
    with pytest.raises(ValueError, match="q3_k"):
        requantize(original, tmp_path / "out.gguf", "q3_k")

"""The roofline arithmetic: model size from a safetensors header, the ideal cache's prompt
tokens, and the minimum time formula."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from prefixkv.bench import roofline


def test_safetensors_size_counts_every_tensor_once_and_skips_metadata() -> None:
    header = {
        "__metadata__": {"format": "pt"},
        "embed.weight": {"dtype": "F32", "shape": [10, 4], "data_offsets": [0, 160]},
        "norm.weight": {"dtype": "BF16", "shape": [4], "data_offsets": [160, 168]},
    }
    assert roofline.safetensors_size(header) == roofline.ModelSize(44, 168)


def test_model_size_reads_the_header_of_each_file(tmp_path: Path) -> None:
    for name, rows in (("a.safetensors", 3), ("b.safetensors", 5)):
        header = json.dumps({"w": {"dtype": "F32", "shape": [rows, 2], "data_offsets": [0, 8]}})
        (tmp_path / name).write_bytes(struct.pack("<Q", len(header)) + header.encode())
    assert roofline.model_size(tmp_path) == roofline.ModelSize(16, 64)


def test_model_size_refuses_a_folder_without_weights(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        roofline.model_size(tmp_path)


@pytest.mark.parametrize(
    ("prompts", "expected"),
    [
        ([], 0),
        ([[1, 2, 3]], 3),
        ([[1, 2, 3], [1, 2, 3]], 3),  # a repeat costs nothing
        ([[1, 2, 3], [1, 2, 4]], 4),  # only the new last token
        ([[1, 2, 3], [1, 2]], 3),  # a prefix of an earlier prompt costs nothing
        ([[1, 2], [3, 2]], 4),  # no shared first token: no sharing at all
    ],
)
def test_distinct_prefix_tokens(prompts: list[list[int]], expected: int) -> None:
    assert roofline.distinct_prefix_tokens(prompts) == expected


def test_bound_compute_and_memory_terms() -> None:
    rates = roofline.MachineRates(bandwidth=1e9, gemm_flops=1e12)
    model = roofline.ModelSize(parameters=100_000_000, weight_bytes=400_000_000)
    got = roofline.bound(rates, model, uncached_tokens=900, output_tokens=100, concurrency=4)
    assert got.compute_s == pytest.approx(1000 * 2 * 1e8 / 1e12)  # 0.2 s
    assert got.memory_s == pytest.approx(25 * 0.4)  # 100 tokens / 4 per step x 0.4 s a step
    assert got.minimum_s == got.memory_s


def test_bound_concurrency_divides_only_the_memory_term() -> None:
    rates = roofline.MachineRates(bandwidth=1e9, gemm_flops=1e9)
    model = roofline.ModelSize(parameters=10, weight_bytes=10)
    one, many = (roofline.bound(rates, model, 50, 64, c) for c in (1, 16))
    assert one.compute_s == many.compute_s
    assert one.memory_s == pytest.approx(16 * many.memory_s)


def test_describe_states_the_formula() -> None:
    text = roofline.describe(roofline.MachineRates(19e9, 130e9), roofline.ModelSize(135e6, 540e6))
    assert "19.0 GB/s" in text and "130 GFLOP/s" in text and "minimum = max(" in text


def test_best_keeps_the_higher_of_each_rate() -> None:
    first = roofline.MachineRates(bandwidth=20e9, gemm_flops=200e9)
    second = roofline.MachineRates(bandwidth=30e9, gemm_flops=110e9)
    assert first.best(second) == second.best(first) == roofline.MachineRates(30e9, 200e9)
    line = roofline.describe_remeasured(second)
    assert "30.0 GB/s" in line and "110 GFLOP/s" in line

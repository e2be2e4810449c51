"""The least time a serving workload can take on this machine, from two measured rates.

Two rates are measured in the benchmark's own process with torch's default threads: memory
read bandwidth (the fastest one-pass read of a tensor far larger than the caches) and fp32 GEMM throughput (a
512x576 @ 576x1536 matmul, the shape of SmolLM2's MLP over a 512-token chunk, on the fastest
of PyTorch's ``mm``, oneDNN and the native kernel). Then, for a
model of P parameters whose weights take W bytes::

    compute  = (uncached prompt tokens + output tokens) * 2 * P / GEMM FLOP/s
    memory   = decode steps * W / bandwidth,
               decode steps = output tokens / min(clients, running limit)
    minimum  = max(compute, memory)

Every token a model computes costs about 2 FLOPs per parameter; every decode step reads all
weights once however many sequences it carries. It is an estimate: the attention term that
grows with the context is left out (about +18% FLOPs at 700 tokens for SmolLM2), and so is
the saving of not applying the output head to prefill tokens (about -21%).
"""

from __future__ import annotations

import contextlib
import json
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1}


_Trie = dict[int, "_Trie"]


@dataclass(frozen=True)
class MachineRates:
    bandwidth: float  # bytes read per second
    gemm_flops: float  # fp32 multiply-adds x 2 per second

    def best(self, other: MachineRates) -> MachineRates:
        """Each rate at the higher of two measurements: what the machine has shown it can do.
        On a shared host a busy neighbour can halve one measurement (two runs of one workload
        here, minutes apart, printed minimums of 2.06 and 1.10 s), which would double the
        minimum and flatter every ratio to it; the higher rate keeps the minimum a lower
        bound."""
        return MachineRates(
            max(self.bandwidth, other.bandwidth), max(self.gemm_flops, other.gemm_flops)
        )


@dataclass(frozen=True)
class ModelSize:
    parameters: int
    weight_bytes: int


@dataclass(frozen=True)
class Bound:
    compute_s: float
    memory_s: float

    @property
    def minimum_s(self) -> float:
        return max(self.compute_s, self.memory_s)


def _best_seconds(run: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``run`` (after one untimed warm-up call)."""
    run()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def measure_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """Bytes per second read from ``mib`` MiB of fp32: the fastest of ``repeats`` passes of
    each of three one-pass readers (``sum``, ``amax``, a dot product with itself), the best
    reader's rate. PyTorch's ``sum`` alone reads about 15% slower here than the others (its
    cascade summation), which would lower every floor computed from it."""
    import torch

    data = torch.ones(mib * (1 << 20) // 4, dtype=torch.float32)
    readers: list[Callable[[], object]] = [
        lambda: float(data.sum()),
        lambda: float(data.amax()),
        lambda: float(torch.dot(data, data)),
    ]
    seconds = min(_best_seconds(read, repeats) for read in readers)
    return data.numel() * 4 / seconds


def measure_gemm(m: int = 512, k: int = 576, n: int = 1536, repeats: int = 30) -> float:
    """fp32 FLOP/s of an ``m x k @ k x n`` matmul, 2*m*k*n FLOPs each: the best of
    ``repeats`` calls, on PyTorch's own ``mm`` and, where they run, oneDNN on a packed weight
    and prefixkv's native kernel (the engine's kernels, :mod:`prefixkv.engine.linear`),
    whichever is fastest here."""
    import torch

    from prefixkv.engine.linear import PackedLinear, onednn_runs
    from prefixkv.engine.native_linear import NativeLinearLayer
    from prefixkv.kernels.build import NativeUnavailable
    from prefixkv.kernels.ops import load

    a, b = torch.randn(m, k), torch.randn(k, n)
    seconds = _best_seconds(lambda: torch.mm(a, b), repeats)
    plain = torch.nn.Linear(k, n, bias=False)
    with torch.no_grad():
        plain.weight.copy_(b.t())
    layers: list[Callable[[torch.Tensor], torch.Tensor]] = []
    if onednn_runs(plain.weight):
        layers.append(PackedLinear(plain))
    with contextlib.suppress(NativeUnavailable):  # no compiler: the others' rates stand
        layers.append(NativeLinearLayer(plain, load()))
    with torch.inference_mode():
        for layer in layers:
            seconds = min(seconds, _best_seconds(lambda: layer(a), repeats))  # noqa: B023
    return 2 * m * k * n / seconds


def measure_machine() -> MachineRates:
    return MachineRates(bandwidth=measure_bandwidth(), gemm_flops=measure_gemm())


def safetensors_size(header: dict[str, object]) -> ModelSize:
    """Parameters and bytes of the tensors listed in a safetensors header (metadata skipped)."""
    parameters = weight_bytes = 0
    for name, entry in header.items():
        if name == "__metadata__" or not isinstance(entry, dict):
            continue
        count = 1
        for dim in entry["shape"]:
            count *= int(dim)
        parameters += count
        weight_bytes += count * _DTYPE_BYTES[str(entry["dtype"])]
    return ModelSize(parameters, weight_bytes)


def model_size(folder: Path) -> ModelSize:
    """Sum over the folder's ``*.safetensors`` files; tied weights are stored, and counted, once."""
    total = ModelSize(0, 0)
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            size = safetensors_size(json.loads(f.read(length)))
        total = ModelSize(
            total.parameters + size.parameters, total.weight_bytes + size.weight_bytes
        )
    if total.parameters == 0:
        raise FileNotFoundError(f"no safetensors weights in {folder}")
    return total


def gguf_size(path: Path) -> ModelSize:
    """Elements and bytes of every tensor in a GGUF file: what a server that streams the
    file's own blocks reads per decode step (tied weights are stored, and counted, once)."""
    from prefixkv.engine.gguf_table import read_table

    tensors = read_table(path).tensors
    elements = sum(int(np.prod(t.dims)) for t in tensors)
    return ModelSize(elements, sum(int(t.data.nbytes) for t in tensors))


def as_dtype(model: ModelSize, dtype_bytes: int) -> ModelSize:
    """``model`` with every parameter stored in ``dtype_bytes`` bytes."""
    return ModelSize(model.parameters, model.parameters * dtype_bytes)


def distinct_prefix_tokens(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens an unbounded exact prefix cache must still compute: for each prompt, those past
    the longest prefix it shares with any earlier prompt (the size of the prompts' trie)."""
    root: _Trie = {}
    total = 0
    for prompt in prompts:
        node = root
        for token in prompt:
            if token not in node:
                node[token] = {}
                total += 1
            node = node[token]
    return total


def bound(
    rates: MachineRates,
    model: ModelSize,
    uncached_tokens: int,
    output_tokens: int,
    concurrency: int,
) -> Bound:
    """The two terms of the module docstring's formula; ``concurrency`` is min(clients,
    running limit), the most sequences one decode step can carry."""
    flops = (uncached_tokens + output_tokens) * 2 * model.parameters
    steps = output_tokens / max(concurrency, 1)
    return Bound(flops / rates.gemm_flops, steps * model.weight_bytes / rates.bandwidth)


def describe_remeasured(rates: MachineRates) -> str:
    """The line for the rates measured again after a run."""
    return (
        f"# roofline measured again after the run: memory read {rates.bandwidth / 1e9:.1f} GB/s, "
        f"fp32 GEMM {rates.gemm_flops / 1e9:.0f} GFLOP/s; each minimum uses the higher of each rate"
    )


def describe(rates: MachineRates, model: ModelSize) -> str:
    """The roofline header line."""
    return (
        f"# roofline: memory read {rates.bandwidth / 1e9:.1f} GB/s, fp32 GEMM "
        f"{rates.gemm_flops / 1e9:.0f} GFLOP/s; model {model.parameters / 1e6:.1f}M parameters, "
        f"{model.weight_bytes / 1e6:.0f} MB; minimum = max((uncached prompt + output tokens) x 2 x "
        f"params / FLOP/s, output tokens / min(clients, running limit) x weight bytes / bandwidth)"
    )

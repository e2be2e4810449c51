"""The raw GGUF rows behind every ``nn.Linear`` weight (and the plain ``nn.Embedding`` input
embedding) of a model loaded from that GGUF.

transformers de-quantizes a GGUF to float weights; a kernel that reads the quantized blocks
directly needs, for each linear layer, the file's bytes in the row order of the HF weight (and
an embedding lookup, the token embedding's rows: :mod:`prefixkv.engine.embedding`).
:func:`file_rows` finds them without any loaded weight (what
:mod:`prefixkv.engine.gguf_load` opens a file with); :func:`scan_raw_weights` also checks
them against a loaded model (a test's and a benchmark's check of the direct load). Usage::

    found = raw_weights(model, gguf_path)  # {"model.layers.0.self_attn.q_proj": RawWeight, ...}
    rw = found["lm_head"]  # tied to token_embd.weight in SmolLM2: those rows
    rw.format, rw.rows.shape  # "q8_0", (49152, 612): 18 blocks of 34 bytes per row
    found["model.embed_tokens"]  # the same rows, found for the input embedding

Contract of :func:`scan_raw_weights` (and :func:`raw_weights`, which also logs):

- reads the file's tensor table with :func:`prefixkv.engine.gguf_table.read_table`
  (memory-mapped; the same table as ``gguf.GGUFReader``'s, without parsing the tokenizer),
  names its tensors with gguf's name table for the file's architecture (the table
  transformers' GGUF loader maps with; a tied weight, such as SmolLM2's lm_head, resolves to
  the tensor it shares) and orders their rows with transformers' own tensor processor for
  that architecture; it never de-quantizes a whole file, only each kept layer's rows, once,
  to verify them;
- scans every ``nn.Linear`` and the model's input embedding if it is a plain
  ``nn.Embedding`` (not a subclass such as Gemma's scaled one); a weight tied to one
  already verified (SmolLM2's head and embedding) is verified once;
- returns a :class:`RawWeight` only for a layer whose rows, de-quantized by the reference
  ``gguf.quants.dequantize``, equal the module's current weight bit for bit (compared as int32
  bit patterns, after an exact upcast of the weight to float32). Any other layer is left out
  with a :class:`LeftOut` reason: its tensor's GGML type is not kept (``format``), no file
  tensor maps to it (``not_found``), transformers' processor does not just reorder its rows
  (``not_row_permutation``), or its bits differ (``mismatch``: e.g. changed after loading, or
  loaded in a dtype that rounds the file's values);
- ``rows`` may be read-only views of the memory-mapped file (unpermuted tensors) and then keep
  the file open; permuted tensors (Llama's q/k, reordered for rotary) are copies;
- raises ``OSError`` if the file cannot be read and ``ValueError`` if it is not a GGUF
  :func:`~prefixkv.engine.gguf_table.read_table` reads.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from prefixkv.engine.gguf_table import TensorEntry, TensorTable, read_table

if TYPE_CHECKING:
    import torch
    from gguf import GGMLQuantizationType
    from transformers import PreTrainedModel

__all__ = [
    "KEPT_FORMATS",
    "FileMap",
    "LeftOut",
    "Located",
    "RawWeight",
    "RawWeightScan",
    "file_map",
    "file_rows",
    "ggml_type",
    "locate",
    "raw_weights",
    "scan_raw_weights",
]

log = logging.getLogger(__name__)

Format = Literal[
    "q8_0", "q4_0", "q4_1", "q4_k", "q5_k", "q6_k", "bf16", "f16", "f32"
]  # what a scan verifies
Reason = Literal["format", "not_found", "not_row_permutation", "mismatch"]

# GGML type name (gguf.GGMLQuantizationType member) -> the format name a RawWeight carries
KEPT_FORMATS: Mapping[str, Format] = {
    "Q8_0": "q8_0",
    "Q4_0": "q4_0",
    "Q4_1": "q4_1",
    "Q4_K": "q4_k",
    "Q5_K": "q5_k",
    "Q6_K": "q6_k",
    "BF16": "bf16",
    "F16": "f16",
    "F32": "f32",
}
_VERIFY_ELEMENTS = 1 << 20  # rows are de-quantized in chunks of about this many weights


@dataclass(frozen=True)
class RawWeight:
    """One linear layer's weight exactly as the GGUF file stores it, in HF row order."""

    format: str  # the GGML type of the file's tensor, lower case ("q4_1", "f16", "q5_k", ...)
    rows: np.ndarray  # uint8 [out_features, row_bytes]: row i holds HF weight row i's blocks
    in_features: int


@dataclass(frozen=True)
class LeftOut:
    """Why a linear layer has no RawWeight."""

    reason: Reason
    detail: str  # the file tensor and what was wrong with it


@dataclass(frozen=True)
class RawWeightScan:
    """Every ``nn.Linear`` of the model (and its plain ``nn.Embedding`` input embedding),
    module name -> found and verified, or left out."""

    weights: Mapping[str, RawWeight]
    left_out: Mapping[str, LeftOut]


@dataclass(frozen=True)
class Located:
    """A 2-D file tensor, and the file row that lands in each HF row after transformers'
    processing (``order[i]``: the file row of HF row i)."""

    tensor: TensorEntry
    order: np.ndarray | None  # int64 [rows]; None if processing does not only reorder rows


def _row_order(result_weights: object, n_rows: int) -> np.ndarray | None:
    """The file row of each HF row (int64 [n_rows]) if the processed probe column is a
    permutation of the row indices, else None."""
    out = np.asarray(result_weights)
    if out.shape != (n_rows, 1):
        return None
    order = out[:, 0].astype(np.int64)
    exact = np.array_equal(out[:, 0], order)
    return order if exact and np.array_equal(np.sort(order), np.arange(n_rows)) else None


def _key_map(model: PreTrainedModel, arch: str, processor: object) -> dict[str, str]:
    """GGUF tensor name -> HF parameter name, by gguf's own name table for ``arch`` (the table
    transformers' ``get_gguf_hf_weights_map`` reads; that function also walks every submodule
    for checkpoints saved from a base model, which costs seconds and no served family needs).

    Empty if gguf does not know ``arch``: every layer is then left out as not found."""
    from gguf import MODEL_ARCH_NAMES, get_tensor_name_map

    from prefixkv.models.family import text_config

    arch_id = next((k for k, v in MODEL_ARCH_NAMES.items() if v == arch), None)
    if arch_id is None:
        return {}
    names = get_tensor_name_map(arch_id, int(text_config(model.config).num_hidden_layers))
    key_map: dict[str, str] = {}
    for hf_name, _ in model.named_parameters(remove_duplicate=False):
        base, _, suffix = processor.preprocess_name(hf_name).rpartition(".")  # type: ignore[attr-defined]
        gguf_name = names.get_name(base)
        if gguf_name is not None:
            key_map[f"{gguf_name}.{suffix}"] = hf_name
    return key_map


@dataclass(frozen=True)
class FileMap:
    """How transformers' GGUF loader fills a model from a file: its tensor ``processor`` for
    the file's architecture (``process(weights=, name=, tensor_key_mapping=,
    parsed_parameters=)``), and ``key_map``: processed GGUF name -> HF parameter name."""

    processor: Any
    key_map: Mapping[str, str]


def file_map(model: PreTrainedModel, table: TensorTable) -> FileMap:
    """The :class:`FileMap` of ``table``'s architecture for ``model`` (any device, meta
    included: only names and the config are read)."""
    from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

    arch = table.architecture
    processor_class = TENSOR_PROCESSORS.get(arch, TensorProcessor)
    processor = processor_class(config=model.config.to_dict())  # type: ignore[no-untyped-call]
    return FileMap(processor, _key_map(model, arch, processor))


def locate(model: PreTrainedModel, table: TensorTable) -> dict[str, Located]:
    """HF parameter name -> the 2-D file tensor transformers loads into it.

    Runs transformers' tensor processor for the file's architecture on a column of row
    indices per tensor, so that whatever it does to the real weight's rows (Llama's rotary
    reordering of q/k) it does to the indices, and maps the name it returns."""
    mapping = file_map(model, table)
    processor, key_map = mapping.processor, mapping.key_map
    located: dict[str, Located] = {}
    for tensor in table.tensors:
        if len(tensor.dims) != 2:
            continue
        n_rows = tensor.dims[1]  # GGML dims are (in_features, out_features)
        probe = np.arange(n_rows, dtype=np.float64).reshape(n_rows, 1)  # exact below 2**53
        result = processor.process(
            weights=probe,
            name=tensor.name,
            tensor_key_mapping=key_map,
            parsed_parameters={"tensors": {}},
        )
        if result.name in key_map:
            located[key_map[result.name]] = Located(tensor, _row_order(result.weights, n_rows))
    return located


def _file_rows(tensor: TensorEntry) -> np.ndarray:
    """uint8 [out_features, row_bytes] view of the tensor's bytes, in file row order."""
    return tensor.data.reshape(tensor.dims[1], -1)


def ggml_type(format: str) -> GGMLQuantizationType:
    """The GGML type a :attr:`RawWeight.format` names (KeyError for none)."""
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType[format.upper()]


def _rows_of(weight: torch.Tensor, found: Located) -> RawWeight | None:
    """``found``'s rows in HF row order for ``weight`` ([rows, features]), unverified; None
    where transformers does more than reorder its rows or the shapes differ."""
    from gguf import GGMLQuantizationType

    tensor = found.tensor
    in_features, out_features = tensor.dims
    if found.order is None or (out_features, in_features) != tuple(weight.shape):
        return None
    rows = _file_rows(tensor)
    if not np.array_equal(found.order, np.arange(out_features)):
        rows = rows[found.order]  # fancy indexing: a contiguous copy in HF row order
    fmt = GGMLQuantizationType(tensor.ggml_type).name.lower()
    return RawWeight(format=fmt, rows=rows, in_features=in_features)


def file_rows(model: PreTrainedModel, located: Mapping[str, Located]) -> dict[str, RawWeight]:
    """Module name -> the file's rows (any GGML type, in HF row order, not verified: there
    may be no loaded weight to verify against) of every ``nn.Linear`` and of the plain input
    embedding whose file tensor transformers fills by reordering rows only. A weight tied to
    another (SmolLM2's head) gets the rows of the tensor they share. Mutates nothing; the
    rows may be views of the file's mapping. ``located``: :func:`locate`'s answer."""
    names_of = _names_by_parameter(model)
    found: dict[str, RawWeight] = {}
    done: dict[int, RawWeight | None] = {}  # by parameter id: a tied weight's rows, once
    for name, weight in _scanned_weights(model):
        if id(weight) not in done:
            own = f"{name}.weight"
            names = sorted(names_of.get(id(weight), [own]), key=lambda n: n != own)
            hit = next((located[n] for n in names if n in located), None)
            done[id(weight)] = None if hit is None else _rows_of(weight, hit)
        rows = done[id(weight)]
        if rows is not None:
            found[name] = rows
    return found


def _bits_equal(rows: np.ndarray, qtype: GGMLQuantizationType, weight: torch.Tensor) -> bool:
    """True if ``rows`` de-quantized by gguf's reference equal ``weight`` bit for bit.

    weight: [out_features, in_features], any float dtype (upcast to float32 exactly)."""
    import torch
    from gguf.quants import dequantize

    expected = weight.detach().to("cpu", torch.float32).contiguous().numpy()
    step = max(1, _VERIFY_ELEMENTS // max(1, expected.shape[1]))
    for start in range(0, rows.shape[0], step):
        got = np.ascontiguousarray(dequantize(rows[start : start + step], qtype))
        want = expected[start : start + step]
        if got.dtype != np.float32 or got.shape != want.shape:
            return False
        if not np.array_equal(got.view(np.int32), want.view(np.int32)):
            return False
    return True


def _raw_weight(weight: torch.Tensor, found: Located) -> RawWeight | LeftOut:
    """The verified RawWeight for ``weight`` ([rows, features]: a linear layer's or an
    embedding's) from its located file tensor, or why not."""
    from gguf import GGMLQuantizationType

    tensor = found.tensor
    qtype = GGMLQuantizationType(tensor.ggml_type)
    what = f"{tensor.name} ({qtype.name}, dims {list(tensor.dims)})"
    fmt = KEPT_FORMATS.get(qtype.name)
    if fmt is None:
        return LeftOut("format", f"{what}: GGML type not kept")
    if found.order is None:
        return LeftOut("not_row_permutation", f"{what}: transformers does more than reorder rows")
    in_features, out_features = tensor.dims
    if (out_features, in_features) != tuple(weight.shape):
        return LeftOut("mismatch", f"{what}: weight shape {tuple(weight.shape)}")
    rows = _file_rows(tensor)
    if not np.array_equal(found.order, np.arange(out_features)):
        rows = rows[found.order]  # fancy indexing: a contiguous copy in HF row order
    if not _bits_equal(rows, qtype, weight):
        return LeftOut("mismatch", f"{what}: de-quantized rows differ from the loaded weight")
    return RawWeight(format=fmt, rows=rows, in_features=in_features)


def _names_by_parameter(model: PreTrainedModel) -> dict[int, list[str]]:
    """id of each parameter -> every name it is reachable under (a tied ``lm_head.weight`` is
    also ``model.embed_tokens.weight``), in ``named_parameters`` order."""
    names: dict[int, list[str]] = {}
    for name, parameter in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(parameter), []).append(name)
    return names


def _scanned_weights(model: PreTrainedModel) -> list[tuple[str, torch.Tensor]]:
    """(module name, weight) of every ``nn.Linear``, and of the input embedding if it is a
    plain ``nn.Embedding`` (a subclass may compute more than a lookup: Gemma scales it)."""
    import torch

    try:
        embedding: torch.nn.Module | None = model.get_input_embeddings()
    except NotImplementedError:  # transformers' answer for a model it cannot find it in
        embedding = None
    scanned: list[tuple[str, torch.Tensor]] = []
    for name, module in model.named_modules():
        plain_embedding = module is embedding and type(module) is torch.nn.Embedding
        if isinstance(module, torch.nn.Linear) or plain_embedding:
            scanned.append((name, module.weight))
    return scanned


def scan_raw_weights(model: PreTrainedModel, gguf_path: Path | str) -> RawWeightScan:
    """Finds and verifies the raw rows of every ``nn.Linear`` weight and of the input
    embedding; see the module docstring.

    Returns the scan (mutates nothing). Raises OSError / ValueError for an unreadable file.
    """
    located = locate(model, read_table(gguf_path))
    names_of = _names_by_parameter(model)
    weights: dict[str, RawWeight] = {}
    left_out: dict[str, LeftOut] = {}
    done: dict[int, RawWeight | LeftOut] = {}  # by parameter id: a tied weight's outcome
    for name, weight in _scanned_weights(model):
        own = f"{name}.weight"  # first, then the names of the weights it is tied to
        names = sorted(names_of.get(id(weight), [own]), key=lambda n: n != own)
        hit = next((located[n] for n in names if n in located), None)
        if id(weight) not in done:
            done[id(weight)] = (
                LeftOut("not_found", f"no 2-D file tensor maps to {' or '.join(names)}")
                if hit is None
                else _raw_weight(weight, hit)
            )
        outcome = done[id(weight)]
        if isinstance(outcome, RawWeight):
            weights[name] = outcome
        else:
            left_out[name] = outcome
    return RawWeightScan(weights=weights, left_out=left_out)


def raw_weights(model: PreTrainedModel, gguf_path: Path | str) -> dict[str, RawWeight]:
    """:func:`scan_raw_weights`'s verified layers; one warning names every layer left out.

    Returns module name -> RawWeight (mutates nothing). Raises as :func:`scan_raw_weights`."""
    scan = scan_raw_weights(model, gguf_path)
    if scan.left_out:
        log.warning(
            "%d of %d weights (linear layers, input embedding) have no raw GGUF rows: %s",
            len(scan.left_out),
            len(scan.left_out) + len(scan.weights),
            "; ".join(f"{n} ({o.reason}: {o.detail})" for n, o in scan.left_out.items()),
        )
    return dict(scan.weights)

"""A model built straight from a GGUF file, never held whole in float32.

transformers' own GGUF load de-quantizes every tensor to float32 (a 4.5 GB Q4_K_M file
becomes ~30 GB). Here::

    opened = open_gguf(path, config, family.model_kwargs())
    opened.model  # the model; the weights of the layers in opened.rows are on the meta device
    opened.rows   # module name -> RawWeight: the file's rows, in HF row order
    widen(opened.model, opened.rows)  # every weight float32: transformers' own load, bit for bit

- the skeleton is built under accelerate's ``init_empty_weights`` (parameters on the meta
  device, buffers such as the rotary ``inv_freq`` computed for real), its head tied as
  ``from_pretrained`` ties it;
- every ``nn.Linear`` and the plain input embedding whose file tensor transformers fills by
  reordering its rows only (Llama's q/k) keeps the file's rows
  (:func:`prefixkv.engine.gguf_blocks.file_rows`), whatever their GGML type; the linear
  kernel packs them (:mod:`prefixkv.engine.weights`), the embedding holds them
  (:mod:`prefixkv.engine.embedding`), and :func:`widen` de-quantizes what is left, one layer
  at a time;
- every other tensor (norms, biases, anything transformers' processor does more to) is
  de-quantized by gguf's reference and passed through transformers' tensor processor for the
  architecture, as its GGUF loader does, then assigned float32: the bits that load gives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from prefixkv.engine.gguf_blocks import (
    Located,
    RawWeight,
    file_map,
    file_rows,
    ggml_type,
    locate,
)
from prefixkv.engine.gguf_table import TensorEntry, TensorTable, read_table

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

__all__ = ["Opened", "dequantize_raw", "open_gguf", "widen"]


@dataclass(frozen=True)
class Opened:
    """A model opened from a GGUF: ``rows`` names the modules whose weight is still on the
    meta device, with the file's rows for it (a tied head and embedding: both names)."""

    model: PreTrainedModel  # eval mode, CPU; every other parameter float32
    rows: Mapping[str, RawWeight]


def dequantize_raw(raw: RawWeight) -> torch.Tensor:
    """``raw``'s rows de-quantized by gguf's reference: a new float32 ``[out, in]``."""
    from gguf.quants import dequantize

    values = dequantize(raw.rows, ggml_type(raw.format))
    return torch.from_numpy(np.array(values, dtype=np.float32, copy=True))


def open_gguf(path: Path, config: PretrainedConfig, model_kwargs: Mapping[str, Any]) -> Opened:
    """The model of ``config`` (a GGUF's, ``quantization_config`` dropped) filled from the
    file at ``path`` as the module docstring says. Raises OSError / ValueError for a file
    :func:`~prefixkv.engine.gguf_table.read_table` cannot read, ValueError where the file
    has no tensor for a parameter."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(  # type: ignore[no-untyped-call]
            config, dtype=torch.float32, **model_kwargs
        )
    model.tie_weights()
    table = read_table(path)
    located = locate(model, table)
    rows = file_rows(model, located)
    kept = {id(model.get_submodule(name).weight) for name in rows}
    _fill_small(model, table, _kept_tensors(model, located, kept), kept)
    missing = [n for n, p in model.named_parameters() if p.is_meta and id(p) not in kept]
    if missing:
        raise ValueError(f"{path}: no tensor of the file fills {', '.join(missing)}")
    model.eval()
    return Opened(model, rows)


def _kept_tensors(
    model: PreTrainedModel, located: Mapping[str, Located], kept: set[int]
) -> set[int]:
    """ids of the file tensors that fill a parameter in ``kept`` (ids): their rows are
    kept, so they are never de-quantized here."""
    params = dict(model.named_parameters(remove_duplicate=False))
    return {id(found.tensor) for hf, found in located.items() if id(params.get(hf)) in kept}


def _values(tensor: TensorEntry) -> np.ndarray:
    """The tensor de-quantized by gguf's reference, in numpy's order (GGML dims reversed)."""
    from gguf.quants import dequantize

    qtype = ggml_type(_type_name(tensor))
    shape = tuple(reversed(tensor.dims))
    rows = tensor.data.reshape(int(np.prod(shape[:-1], dtype=np.int64)), -1)
    return np.asarray(dequantize(rows, qtype)).reshape(shape)


def _type_name(tensor: TensorEntry) -> str:
    from gguf import GGMLQuantizationType

    return GGMLQuantizationType(tensor.ggml_type).name


def _fill_small(model: PreTrainedModel, table: TensorTable, skip: set[int], kept: set[int]) -> None:
    """Assigns every file tensor but those in ``skip`` (ids) as transformers' GGUF loader
    would (de-quantized, processed, float32). Mutates ``model``'s parameters."""
    mapping = file_map(model, table)
    params = dict(model.named_parameters(remove_duplicate=False))
    for tensor in table.tensors:
        if id(tensor) in skip:
            continue
        result = mapping.processor.process(
            weights=_values(tensor),
            name=tensor.name,
            tensor_key_mapping=mapping.key_map,
            parsed_parameters={"tensors": {}},
        )
        hf_name = mapping.key_map.get(result.name) if result.name else None
        if hf_name is None or hf_name not in params or id(params[hf_name]) in kept:
            continue  # transformers skips it too (e.g. rope_freqs), or its rows are kept
        values = torch.from_numpy(np.copy(result.weights)).to(torch.float32)
        old = params[hf_name]
        if tuple(values.shape) != tuple(old.shape):
            raise ValueError(f"{tensor.name}: shape {tuple(values.shape)}, "
                             f"{hf_name} takes {tuple(old.shape)}")  # fmt: skip
        _replace(model, old, torch.nn.Parameter(values))


def _replace(model: torch.nn.Module, old: torch.Tensor, new: torch.nn.Parameter) -> None:
    """Puts ``new`` wherever ``old`` is a parameter of a module of ``model`` (tied names
    too). Mutates ``model``."""
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is old:
                module._parameters[name] = new


@torch.no_grad()
def widen(model: torch.nn.Module, rows: Mapping[str, RawWeight]) -> int:
    """Makes every parameter of ``model`` a float32 one: a weight on the meta device from its
    rows in ``rows`` (module name -> RawWeight), de-quantized one at a time; a 16-bit one
    widened (exact). Returns how many it changed. ValueError for a meta weight without rows.
    Mutates ``model``."""
    changed = 0
    for name, module in list(model.named_modules()):
        for attr, param in list(module._parameters.items()):
            if param is None or (param.dtype == torch.float32 and not param.is_meta):
                continue
            if param.is_meta:
                if attr != "weight" or name not in rows:
                    raise ValueError(f"{name}.{attr} has no values (meta) and no file rows")
                values = dequantize_raw(rows[name])
            else:
                values = param.detach().to(torch.float32)
            _replace(model, param, torch.nn.Parameter(values))
            changed += 1
    return changed

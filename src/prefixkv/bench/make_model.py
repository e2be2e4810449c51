"""Write a randomly initialised model of a real checkpoint's shape (Llama-3.2-1B/3B,
Qwen2.5-1.5B/3B, or a tiny one for tests) with SmolLM2's tokenizer, without any download.

``--weights bf16|f32`` writes a Hugging Face folder (config.json, one safetensors shard a
layer, generation_config.json, tokenizer files); ``q8_0|q4_0|q4_1|q4_k_m|q5_k_m`` one GGUF
file ``<family>-<size>-<weights>.gguf`` (the K mixes: :mod:`prefixkv.bench.model_gguf`). Tensors are generated one layer (HF) or one tensor (GGUF)
at a time, so a 3B model never sits whole in memory. Outputs are gibberish: only the sizes,
and so the time a forward pass takes, are real.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from prefixkv.bench.model_gguf import GGUF_WEIGHTS, write_gguf
from prefixkv.bench.model_shapes import (
    CONTEXT,
    SHAPES,
    STD,
    VOCAB,
    Shape,
    TensorSpec,
    tensor_groups,
    tensor_values,
)

if TYPE_CHECKING:
    from transformers import PretrainedConfig

FOLDER_WEIGHTS = ("bf16", "f32")
WEIGHTS = (*FOLDER_WEIGHTS, *GGUF_WEIGHTS)
_BOS, _EOS = 1, 2  # SmolLM2's <|im_start|> and <|im_end|> (its GGUF's bos/eos token ids)


def _config(family: str, shape: Shape, weights: str) -> PretrainedConfig:
    """The transformers config (LlamaConfig or Qwen2Config) of ``shape``."""
    from transformers import LlamaConfig, Qwen2Config

    kwargs: dict[str, Any] = {
        "vocab_size": VOCAB,
        "hidden_size": shape.hidden,
        "intermediate_size": shape.inter,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "max_position_embeddings": CONTEXT,
        "rms_norm_eps": shape.rms_eps,
        "rope_parameters": {"rope_type": "default", "rope_theta": shape.rope_theta},
        "initializer_range": STD,
        "tie_word_embeddings": True,
        "bos_token_id": _BOS,
        "eos_token_id": _EOS,
        "dtype": "bfloat16" if weights == "bf16" else "float32",
    }
    if family == "llama":
        return LlamaConfig(head_dim=shape.head_dim, **kwargs)
    return Qwen2Config(**kwargs)


def config_of(family: str, size: str, weights: str = "f32") -> PretrainedConfig:
    """The transformers config of ``family`` at ``size``; KeyError for an unknown pair."""
    return _config(family, SHAPES[(family, size)], weights)


def _smollm2_gguf() -> Path:
    from prefixkv.engine.loader import resolve_model

    return resolve_model("smollm2")


def _write_tokenizer(out: Path) -> None:
    """SmolLM2's tokenizer, read from the GGUF's metadata (no weights) and saved to ``out``."""
    from transformers import AutoTokenizer

    gguf = _smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(
        gguf.parent, gguf_file=gguf.name, local_files_only=True
    )
    tokenizer.save_pretrained(out)


def _write_shards(
    out: Path, groups: list[tuple[str, list[TensorSpec]]], weights: str, seed: int
) -> None:
    """One safetensors file a group (the embedding, then each layer) plus the index that
    maps every tensor to its file; holds one group's float32 values at a time."""
    import torch
    from safetensors.torch import save_file

    dtype = torch.bfloat16 if weights == "bf16" else torch.float32
    weight_map: dict[str, str] = {}
    total, index = 0, 0
    for number, (_, specs) in enumerate(groups):
        name = f"model-{number + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for spec in specs:
            tensors[spec.hf_name] = torch.from_numpy(tensor_values(spec, seed, index)).to(dtype)
            weight_map[spec.hf_name] = name
            total += tensors[spec.hf_name].nbytes
            index += 1
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        del tensors
    body = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(body, indent=2) + "\n")


def write_folder(out: Path, family: str, size: str, weights: str, seed: int) -> Path:
    """Writes the HF folder ``out`` (created if missing) of ``family`` at ``size`` with
    ``weights`` "bf16" or "f32". Returns ``out``."""
    shape = SHAPES[(family, size)]
    out.mkdir(parents=True, exist_ok=True)
    _config(family, shape, weights).save_pretrained(out)
    generation = {"bos_token_id": _BOS, "eos_token_id": _EOS, "pad_token_id": _EOS}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    _write_tokenizer(out)
    _write_shards(out, list(tensor_groups(family, shape)), weights, seed)
    return out


def write_model(out: Path, family: str, size: str, weights: str, seed: int = 0) -> Path:
    """Writes the model and returns what to load: the folder ``out`` for bf16/f32, else the
    file ``out/<family>-<size>-<weights>.gguf``. Raises KeyError for an unknown family, size
    or weights."""
    if weights in FOLDER_WEIGHTS:
        return write_folder(out, family, size, weights, seed)
    shape = SHAPES[(family, size)]
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{family}-{size}-{weights}.gguf"
    specs = [spec for _, group in tensor_groups(family, shape) for spec in group]
    write_gguf(path, family=family, shape=shape, specs=specs, weights=weights, seed=seed,
               tokenizer_gguf=_smollm2_gguf())  # fmt: skip
    return path


def _size_of(path: Path) -> int:
    files = [path] if path.is_file() else [p for p in path.iterdir() if p.is_file()]
    return sum(p.stat().st_size for p in files)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="prefixkv bench make-model", description=__doc__)
    p.add_argument("--family", choices=sorted({f for f, _ in SHAPES}), required=True)
    p.add_argument("--size", choices=sorted({s for _, s in SHAPES}), required=True)
    p.add_argument("--weights", choices=WEIGHTS, required=True)
    p.add_argument("--out", type=Path, required=True, help="folder to write (created)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    start = time.perf_counter()
    path = write_model(args.out, args.family, args.size, args.weights, args.seed)
    seconds = time.perf_counter() - start
    parameters = sum(
        int(np.prod(s.shape)) for _, g in tensor_groups(args.family, SHAPES[(args.family, args.size)]) for s in g
    )  # fmt: skip
    print(f"wrote {path}: {parameters / 1e9:.3f} B parameters, {_size_of(path) / 1e9:.3f} GB "
          f"in {seconds:.1f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

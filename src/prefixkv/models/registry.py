"""The families, keyed by ``config.model_type``: every module of this package that defines
``FAMILY`` (found once, on the first lookup), and :data:`GENERIC` for the rest."""

from __future__ import annotations

import functools
import importlib
import logging
import pkgutil
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from prefixkv.models.family import LLAMA_SIBLINGS, Family, Refused, text_config

log = logging.getLogger("prefixkv.models")

_NOT_FAMILIES = frozenset({"family", "registry"})

GENERIC = Family(
    name="generic",
    model_types=(),
    attention="whatever transformers implements (the engine refuses layers that are not "
    "full or sliding-window attention; the batch runner probes the attention)",
    siblings=LLAMA_SIBLINGS,
    norms=(),
    mlps=(),
    keeps="a model_type without a prefixkv family keeps transformers' norms and MLPs "
    "(native swaps off: their math is not known to match the native kernels')",
)
"""What a model whose ``model_type`` has no family is served as: Llama-named sibling
projections joined (exact in any call order), nothing else replaced."""


@functools.cache
def families() -> Mapping[str, Family | Refused]:
    """Every family module's ``FAMILY`` by each of its model types (imported and built once,
    read-only). Raises ValueError when two modules claim one model type."""
    found: dict[str, Family | Refused] = {}
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.name in _NOT_FAMILIES or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"prefixkv.models.{info.name}")
        family: Family | Refused = module.FAMILY
        for model_type in family.model_types:
            if model_type in found:
                raise ValueError(f"model_type {model_type!r} claimed by two families")
            found[model_type] = family
    return MappingProxyType(found)


def family_of(model_or_config: torch.nn.Module | Any) -> Family:
    """The family of a model (its ``config``) or of a config, by ``model_type`` (the config's,
    else its text config's); :data:`GENERIC` for a type without one (logged once per type).
    Raises UnsupportedModelError for a refused family, naming why."""
    config = getattr(model_or_config, "config", model_or_config)
    types = [getattr(config, "model_type", ""), getattr(text_config(config), "model_type", "")]
    known = families()
    for model_type in types:
        family = known.get(model_type)
        if isinstance(family, Refused):
            raise family.error(model_type)
        if family is not None:
            return family
    _log_generic(types[0])
    return GENERIC


@functools.cache
def _log_generic(model_type: str) -> None:
    served = sorted(t for t, f in families().items() if isinstance(f, Family))
    log.warning(
        "model_type %r has no prefixkv family (families: %s): served as generic, native norm "
        "and MLP swaps off (their math is not known to match)",
        model_type,
        ", ".join(served),
    )

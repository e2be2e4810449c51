"""Every kernel the engine can choose, for the exactness matrix: the linear kernels of
:mod:`prefixkv.engine.linear` and the batch runner's attention kernels of
:mod:`prefixkv.engine.batch.kernels`.

A kernel that cannot run here skips its tests, saying why; with ``PREFIXKV_REQUIRE_KERNELS=1``
(``.ci/run`` sets it) it fails them instead. ``auto`` must resolve to ``native``: that is what
``Engine.from_pretrained`` and ``prefixkv serve`` run by default on a float32 CPU model where
the library builds. Where ``auto`` resolves to anything else its tests are skipped (failed
under the switch) too, so that a fallback is never tested under the default's name.
"""

from __future__ import annotations

import os
from typing import Any, NoReturn

import pytest

from prefixkv.engine import linear
from prefixkv.engine.batch import kernels
from prefixkv.engine.batch.records import BatchLimits
from prefixkv.engine.batch.runner import BatchRunner
from prefixkv.kernels.build import NativeUnavailable

from .tiny import tiny_llama

REQUIRE = "PREFIXKV_REQUIRE_KERNELS"
LINEAR_KERNELS = linear.KERNELS
ATTENTION_KERNELS = kernels.KERNELS
AUTO_RESOLVES_TO = "native"
"""What ``auto`` must pick here, for the linear layers and for attention alike."""


def unavailable(message: str) -> NoReturn:
    """Skip the running test with ``message``; fail it under ``PREFIXKV_REQUIRE_KERNELS=1``."""
    if os.environ.get(REQUIRE) == "1":
        pytest.fail(f"{message} ({REQUIRE}=1: every kernel must run here)", pytrace=False)
    pytest.skip(message)


def kernel_llama(name: str, seed: int = 0) -> Any:
    """``tiny_llama(seed)`` with its linear layers on the kernel called ``name`` (see
    :func:`on_linear_kernel`)."""
    return on_linear_kernel(tiny_llama(seed), name)


def on_linear_kernel(model: Any, name: str) -> Any:
    """``model`` with its linear layers on the kernel called ``name`` (one of
    :data:`LINEAR_KERNELS`), chosen and installed as ``Engine.from_pretrained`` does; mutates
    and returns ``model``. Skips (fails under the switch) where that kernel cannot run, or
    where ``auto`` resolves to another kernel than :data:`AUTO_RESOLVES_TO`."""
    try:
        linear.linear_kernel(name, model).install(model)
    except RuntimeError as exc:  # the kernels' contract for "cannot run these weights here"
        unavailable(f"linear kernel {name!r} cannot run here: {exc}")
    expected = AUTO_RESOLVES_TO if name == "auto" else name
    resolved = linear.kernel_of(model)
    if resolved != expected:
        unavailable(
            f"linear kernel {name!r} installed {resolved!r}, not {expected!r}: {_why_not_native()}"
        )
    return model


def _why_not_native() -> str:
    try:
        linear.linear_kernel(AUTO_RESOLVES_TO, tiny_llama()).install(tiny_llama())
    except RuntimeError as exc:
        return str(exc)
    return "the native kernel installs on its own, yet auto did not pick it"


def kernel_runner(engine: Any, name: str, limits: BatchLimits) -> BatchRunner:
    """A BatchRunner over ``engine`` whose attention kernel is the one called ``name`` (one
    of :data:`ATTENTION_KERNELS`). Skips (fails under the switch) where it cannot run, or
    where ``auto`` resolves to another kernel than :data:`AUTO_RESOLVES_TO`."""
    try:
        runner = BatchRunner(engine, limits, attention_kernel=name)
    except NativeUnavailable as exc:
        unavailable(f"attention kernel {name!r} cannot run here: {exc}")
    expected = AUTO_RESOLVES_TO if name == "auto" else name
    resolved = runner.attention_kernel.name
    if resolved != expected:
        try:
            BatchRunner(engine, limits, attention_kernel=expected)
            why = f"the {expected} kernel runs on its own, yet auto did not pick it"
        except NativeUnavailable as exc:
            why = str(exc)
        unavailable(f"attention kernel {name!r} resolved to {resolved!r}, not {expected!r}: {why}")
    return runner

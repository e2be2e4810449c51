"""Import-time placeholders that let the peers' import chains load on a CPU-only machine.

SGLang and vLLM are installed with ``--no-deps`` (their full dependency sets pull CUDA torch
and GPU kernels). Their import chains still import packages that the code the benchmark drives
never calls (Triton, torchvision, ZeroMQ, ...). :func:`stubbed_imports` serves placeholder
modules for those, only while the peer is imported and only to the peer's own modules;
:func:`quiet_import` silences their import-time chatter.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

__all__ = ["PeerUnavailable", "StubModule", "one_line", "quiet_import", "stubbed_imports"]


class PeerUnavailable(Exception):
    """A peer system cannot be constructed here; the message is a one-line reason."""


class StubModule(types.ModuleType):
    """Placeholder for a dependency that a peer's import chain imports but the code we drive
    never calls.

    Any attribute is another placeholder; calling one with a single callable returns that
    callable unchanged (so ``@triton.jit`` and ``@triton.jit(...)`` leave the decorated
    function as it is); ``X | None``, ``X[...]`` and subclassing (as ``object``) work, so
    module-level annotations and class statements evaluate.
    """

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        value = StubModule(f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and callable(args[0]):
            return args[0]
        return StubModule(f"{self.__name__}()")

    def __getitem__(self, item: Any) -> Any:
        return self

    def __or__(self, other: Any) -> Any:
        return self

    __ror__ = __or__

    def __mro_entries__(self, bases: tuple[Any, ...]) -> tuple[type, ...]:
        return (object,)

    def __iter__(self) -> Iterator[Any]:
        return iter(())


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves :class:`StubModule` for the given top-level packages and their submodules, but
    only to imports made by the ``clients`` packages.

    Any other importer (torch, transformers, ...) gets the normal "not installed" answer, so
    their ``try: import triton`` fallbacks still take the no-Triton branch while SGLang or
    vLLM is being imported.
    """

    def __init__(self, tops: frozenset[str], clients: frozenset[str]) -> None:
        self.tops = tops
        self.clients = clients

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname.partition(".")[0] in self.tops and self._client_is_importing():
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def _client_is_importing(self) -> bool:
        frame: types.FrameType | None = sys._getframe(2)
        while frame is not None:
            module = frame.f_globals.get("__name__") or ""
            if module == __name__ or module.partition(".")[0] == "importlib":
                frame = frame.f_back
                continue
            return module.partition(".")[0] in self.clients
        return False

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        return StubModule(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def _prewarm_availability_checks() -> None:
    """Let torch and transformers record the *real* absence of the stubbed packages before
    placeholders appear in ``sys.modules``.

    Their "is X installed" checks are cached (``functools.cache``/``lru_cache``) and some run
    lazily while SGLang imports; answered during the stub window they would say "installed"
    for good (transformers would then import torchvision image transforms, and torch would
    believe Triton is present).
    """
    with contextlib.suppress(Exception):
        from torch.utils._triton import has_triton_package

        has_triton_package()
    with contextlib.suppress(Exception):
        from transformers.utils import import_utils as tf_import_utils

        for check in (
            "is_torchvision_available",
            "is_torchvision_v2_available",
            "is_triton_available",
            "is_ipython_available",
        ):
            fn = getattr(tf_import_utils, check, None)
            if fn is not None:
                with contextlib.suppress(Exception):
                    fn()


@contextlib.contextmanager
def quiet_import() -> Iterator[None]:
    """Silence a peer's import-time chatter (CUDA-only UserWarnings, the 'Failed to import
    from vllm._C' log line SGLang triggers)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


@contextlib.contextmanager
def stubbed_imports(tops: Sequence[str], clients: Sequence[str]) -> Iterator[list[str]]:
    """Import with placeholders for those of ``tops`` that are not installed, served only to
    modules of the ``clients`` packages (see ``_StubFinder``). Yields the stubbed names.

    The placeholders exist only inside the ``with`` block and only for the clients: an import
    statement of a stubbed package made by any other module raises ``ModuleNotFoundError`` as
    it would without the stubs, even after a client has put the placeholder into
    ``sys.modules``. Afterwards the finder and the import guard are removed and the
    placeholders dropped from ``sys.modules`` (the peer modules keep their own references),
    so the rest of the process sees these packages as absent. An installed package is never
    replaced.
    """
    missing = [t for t in tops if t not in sys.modules and importlib.util.find_spec(t) is None]
    if not missing:
        yield []
        return
    _prewarm_availability_checks()
    finder = _StubFinder(frozenset(missing), frozenset(clients))
    real_import = builtins.__import__
    guarded = _guarded_import(real_import, finder.tops, finder.clients)
    sys.meta_path.insert(0, finder)
    builtins.__import__ = guarded
    try:
        yield missing
    finally:
        if builtins.__import__ is guarded:
            builtins.__import__ = real_import
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(finder)
        for name in [n for n in sys.modules if n.partition(".")[0] in finder.tops]:
            if isinstance(sys.modules[name], StubModule):
                del sys.modules[name]


def _guarded_import(
    real_import: Callable[..., Any], stub_tops: frozenset[str], client_tops: frozenset[str]
) -> Callable[..., Any]:
    """``__import__`` that refuses the stubbed packages to every importer but the clients.

    Once a client has imported a placeholder it sits in ``sys.modules``, where an import
    statement elsewhere (torch's ``try: import triton``) would find it without asking any
    finder.
    """

    def guarded_import(
        name: str,
        globals: dict[str, Any] | None = None,
        locals: Any = None,
        fromlist: Any = (),
        level: int = 0,
    ) -> Any:
        if level == 0 and name.partition(".")[0] in stub_tops:
            importer = (globals or {}).get("__name__") or ""
            if importer.partition(".")[0] not in client_tops:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, globals, locals, fromlist, level)

    return guarded_import


def one_line(exc: BaseException) -> str:
    """``Type: message``, first line only, for a PeerUnavailable reason."""
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0] if text else type(exc).__name__

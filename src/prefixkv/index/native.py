"""The prefix index's native descent: 8-byte token ids (SGLang's ``array('q')``) read in place.

A query in SGLang's form costs the Python descent a conversion to canonical bytes before it
compares anything; for short queries that is most of a match. ``csrc/descent.c``, a small
CPython extension (one C call, no ctypes), walks the same :class:`~prefixkv.index.node.Node`
tree comparing the int64 ids with the uint32 labels where they lie, and reads (validates)
them exactly as far as the Python descent would, so it returns the same path and raises the
same errors; :mod:`prefixkv.index.descent` stays the executable reference (the property
tests compare the two).

It is compiled at first use by :mod:`prefixkv.kernels.build` (identity-named, cached, trust
checks of :mod:`prefixkv.kernels.trust`; ``PREFIXKV_KERNEL_SANITIZE=1`` builds it with the
sanitizers like the kernels). Importing this module imports neither torch nor the build
machinery: :func:`native_descent` does, when first called.

:class:`NativeDescent` is the door: every argument is checked again in C in every build
(buffer format ``'q'`` or ``'l'`` with 8-byte items, 1-D, contiguous; node types, label
lengths, children dicts), raising TypeError/ValueError naming the argument.
"""

from __future__ import annotations

import array
import functools
import logging
import sys
import sysconfig
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from prefixkv.index.node import Node

__all__ = ["TYPECODES", "NativeDescent", "native_descent", "native_descent_or_none"]

log = logging.getLogger("prefixkv.index")

SOURCE = Path(__file__).with_name("csrc") / "descent.c"
MODULE = "prefixkv_descent"  # the name its PyInit_ function carries
TYPECODES = frozenset(code for code in "ql" if array.array(code).itemsize == 8)
"""The ``array`` typecodes the native descent reads: signed 8-byte integers."""


class NativeDescent:
    """The door to the compiled descent (module docstring). Stateless; any thread may call
    it under the index's lock."""

    __slots__ = ("_find", "_page_firsts", "_read")

    def __init__(self, module: Any) -> None:
        self._find = module.find
        self._read = module.read
        self._page_firsts = module.page_firsts

    def find(
        self,
        root: Node | None,
        ids: array.array[int],
        block_size: int,
        key: Callable[[bytes], Hashable] | None,
    ) -> tuple[list[Node], int, bytes]:
        """What ``PrefixIndex._find`` finds for ``ids`` below namespace root ``root`` (None:
        the namespace holds nothing): the path, the blocks used in its last node (0 for an
        empty path) and the canonical bytes of the ids read. ``key``: the index's child key,
        None for the bytes themselves. Raises ValueError naming the first id read outside
        ``[0, 2**32)``, TypeError for ids that are not 8-byte signed integers."""
        children = None if root is None else root.children
        return self._find(children, ids, block_size, key, Node)  # type: ignore[no-any-return]

    def read(self, ids: array.array[int], stop: int) -> bytes:
        """The canonical bytes of ``ids[:stop]``; errors as :meth:`find`."""
        return self._read(ids, stop)  # type: ignore[no-any-return]

    def page_firsts(self, slots: Any, page_size: int) -> array.array[int]:
        """The first slot of each page of ``slots`` (8-byte signed ints, a whole number of
        pages: ValueError if not) as an ``array('q')``, checking that every page's slots are
        consecutive (ValueError if not). For
        :func:`prefixkv.integrations.sglang_pages.page_firsts`: SGLang's KV slot tensors,
        read in place through a NumPy view; no Python int is made per page."""
        firsts = array.array("q")
        firsts.frombytes(self._page_firsts(slots, page_size))
        return firsts


def _product() -> Any:
    """The descent as a :class:`prefixkv.kernels.build.Product`: compiled against this
    interpreter's headers, its exact version a define (part of the library's identity)."""
    from prefixkv.kernels.build import Product

    include = sysconfig.get_paths()["include"]
    extra = (f"-I{include}", f"-DPREFIXKV_PYTHON_HEXVERSION={sys.hexversion:#x}")
    return Product("descent", (SOURCE,), (Path(include) / "Python.h",), extra, ((),))


@functools.lru_cache(maxsize=4)
def native_descent(cache_dir: Path | None = None) -> NativeDescent:
    """The native descent, built first if needed (once per process and cache directory, in
    ``<cache dir>/native/`` as the kernels). Raises
    :class:`prefixkv.kernels.build.NativeUnavailable` when it cannot be built or loaded."""
    from prefixkv.kernels.build import load_product
    from prefixkv.kernels.trust import open_extension

    product = _product()
    module = load_product(product, lambda path: open_extension(path, MODULE), cache_dir)
    return NativeDescent(module)


@functools.lru_cache(maxsize=4)
def native_descent_or_none(cache_dir: Path | None = None) -> NativeDescent | None:
    """:func:`native_descent`, or None (logged once per process and cache directory, one
    line) when it cannot be built here: the index then uses its Python descent, the same
    results, slower."""
    from prefixkv.kernels.build import NativeUnavailable

    try:
        return native_descent(cache_dir)
    except NativeUnavailable as exc:
        log.warning("prefix index: native descent unavailable, using Python's (%s)", exc)
        return None

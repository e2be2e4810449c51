"""What an object really holds: the tensors reachable from it, and the bytes of their storage.

A cache that reports ``capacity_bytes`` could still keep KV elsewhere (a caller's tensors
retained after ``store``, a second buffer, a pool that grew): the bytes of every distinct
storage reachable from the cache, counted here, catch that where its own counters cannot.
"""

from __future__ import annotations

import gc
import types

import torch

# The world beyond an object: not followed (a function's globals reach every module).
_BOUNDARY = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.CodeType)


def tensors_held(root: object) -> list[torch.Tensor]:
    """Every tensor reachable from ``root`` through object references (attributes,
    containers, closures' cells, bound methods' ``__self__``), not through classes, modules
    or functions. Tensors are leaves: their own references are not followed."""
    seen: set[int] = set()
    found: list[torch.Tensor] = []
    stack: list[object] = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, _BOUNDARY):
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            found.append(obj)
        else:
            stack.extend(gc.get_referents(obj))
    return found


def storage_bytes_held(root: object) -> int:
    """The bytes of every distinct tensor storage reachable from ``root`` (a storage shared by
    several views counts once, whole, however little of it the views cover)."""
    storages = {}
    for tensor in tensors_held(root):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())

"""The one door to prefixkv's native kernels: every call into the library goes through here.

:class:`Kernels` takes tensors, never pointers. Before each call it checks what the C code
relies on: dtype (float32; int64 slots), device (CPU), layout and strides, shapes against
each other, and that every index stays within its tensor, and raises TypeError (wrong kind
of tensor) or ValueError (wrong shape, stride or index) naming the argument and the
problem, in every build mode (no ``assert``: ``python -O`` keeps these checks). The
attention call's index arrays are checked once per step when its
:class:`~prefixkv.kernels.items.AttendItems` is built; a call compares only the tensors'
sizes with what they reach. The library itself refuses an argument block of another size or
version and a store slot outside the pool (``csrc/abi.h``); those codes become exceptions
here too.

Cost: a few attribute reads per tensor per call, constant in the tensors' sizes
(``python benchmarks/kernel_door.py`` measures it).
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import torch

from prefixkv.kernels import abi, build, formats
from prefixkv.kernels.formats import PackedWeight
from prefixkv.kernels.items import INT32_MAX, AttendItems

if TYPE_CHECKING:
    from prefixkv.kernels.decoder import DecoderLayer, DecoderShape, StepTensors

_F32, _I64, _U8, _STRIDED = torch.float32, torch.int64, torch.uint8, torch.strided
_INT8_PATHS = {0: "generic", 1: "vnni", 2: "avx2"}


class Kernels:
    """The loaded native library (:func:`load`), behind typed, checked methods.

    ``lanes``: query rows a work item holds (``heads // kv_heads`` times its members must
    not exceed it); ``linear_block``: output columns per packed weight block
    (:meth:`linear`); ``int8_path``: the instructions the integer-dot formats run on."""

    def __init__(self, library: ctypes.CDLL) -> None:
        """Declares the library's functions; RuntimeError when it speaks another ABI."""
        abi.declare(library)
        self._lib = library
        self.lanes = int(library.prefixkv_lanes())
        self.linear_block = int(library.prefixkv_linear_block())
        self.int8_path = _INT8_PATHS.get(int(library.prefixkv_int8_path()), "unknown")
        """What forms the integer-dot formats' sums in this build (``generic``, ``vnni``, ``avx2``)."""
        if self.linear_block != formats.BLOCK:
            raise RuntimeError(f"the native library packs {self.linear_block} columns a block; "
                               f"prefixkv packs {formats.BLOCK}")  # fmt: skip

    def linear(self, x: torch.Tensor, weight: PackedWeight,
               bias: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
        """``x @ W.T + bias`` as a new ``[rows, weight.out_features]`` tensor. ``x``: ``[rows,
        weight.in_features]`` contiguous; ``weight``: W packed in column blocks of
        ``linear_block`` (:mod:`prefixkv.kernels.formats`: format, uint8 ``data`` of
        ``[blocks, block_bytes]``, contiguous); ``bias``: ``[out_features]`` or None."""
        _dense("x", x, 2)
        rows, k = x.shape
        code = _weight(weight)
        if k != weight.in_features:
            raise ValueError(f"x: {k} features, the weight takes {weight.in_features}")
        if bias is not None:
            _dense("bias", bias, 1)
            if bias.shape[0] != weight.out_features:
                raise ValueError(f"bias: {bias.shape[0]} values for {weight.out_features} columns")
        out = x.new_empty(rows, weight.out_features)
        status = self._lib.prefixkv_linear(
            x.data_ptr(), rows, k, code, weight.data.data_ptr(),
            None if bias is None else bias.data_ptr(), weight.out_features, out.data_ptr(),
            torch.get_num_threads(),
        )  # fmt: skip
        _check_status(status)
        return out

    def linear_block_bytes(self, format: str, in_features: int) -> int:
        """The library's bytes per column block of ``format`` (-1 where it has none): what
        :func:`prefixkv.kernels.formats.block_bytes` must agree with."""
        return int(self._lib.prefixkv_linear_block_bytes(formats.CODES[format], in_features))

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """``weight * x / sqrt(mean(x^2) + eps)`` over the last dimension, as a new tensor of
        ``x``'s shape. ``x``: ``[..., dim]`` contiguous; ``weight``: ``[dim]``."""
        _dense("weight", weight, 1)
        dim = weight.shape[0]
        _dense("x", x, None)
        if x.dim() == 0 or x.shape[-1] != dim or dim == 0:
            raise ValueError(f"x: shape {tuple(x.shape)} does not end in weight's {dim} (> 0)")
        if not isinstance(eps, float | int):
            raise TypeError(f"eps: a number expected, not {type(eps).__name__}")
        out = torch.empty_like(x)
        self._lib.prefixkv_rms_norm(
            x.data_ptr(), x.numel() // dim, dim, dim, weight.data_ptr(), float(eps), out.data_ptr()
        )
        return out

    def silu_mul(self, gate_up: torch.Tensor, width: int) -> torch.Tensor:
        """``silu(gate) * up`` as a new ``[..., width]`` tensor, where ``gate_up`` is
        ``[..., 2 * width]`` contiguous, gate columns first."""
        _dense("gate_up", gate_up, None)
        if width < 1 or gate_up.dim() == 0 or gate_up.shape[-1] != 2 * width:
            raise ValueError(
                f"gate_up: shape {tuple(gate_up.shape)} does not end in 2 * width = {2 * width}"
            )
        out = gate_up.new_empty((*gate_up.shape[:-1], width))
        self._lib.prefixkv_silu_mul(
            gate_up.data_ptr(), gate_up.numel() // (2 * width), width, 2 * width, out.data_ptr(),
            torch.get_num_threads(),
        )  # fmt: skip
        return out

    def rotary(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, heads: int) -> None:
        """Rotary position embedding of the first ``heads`` heads of each row of ``x``, in
        place: ``x * cos + rotate_half(x) * sin`` per head, as transformers computes it in
        float32 (each product and the sum rounded on their own). ``x``: ``[rows, width]``
        contiguous, ``width >= heads * dim``; ``cos``/``sin``: ``[rows, dim]`` contiguous,
        ``dim`` even. Mutates ``x`` only."""
        _dense("x", x, 2)
        _dense("cos", cos, 2)
        _dense("sin", sin, 2)
        rows, dim = cos.shape
        if sin.shape != cos.shape or dim < 2 or dim % 2:
            raise ValueError(f"cos, sin: shapes {tuple(cos.shape)}, {tuple(sin.shape)}: "
                             "equal, with an even head dim, expected")  # fmt: skip
        if not isinstance(heads, int):
            raise TypeError(f"heads: an int expected, not {type(heads).__name__}")
        if heads < 1 or x.shape[0] != rows:
            raise ValueError(f"x: {x.shape[0]} rows and heads={heads!r}; cos has {rows} rows")
        if heads * dim > x.shape[1]:
            raise ValueError(f"x: {x.shape[1]} columns hold fewer than {heads} heads of {dim}")
        self._lib.prefixkv_rotary(
            x.data_ptr(), rows, heads, dim, x.shape[1], cos.data_ptr(), sin.data_ptr(),
            torch.get_num_threads(),
        )  # fmt: skip

    def store(self, keys: torch.Tensor, values: torch.Tensor, new_keys: torch.Tensor,
              new_values: torch.Tensor, slots: torch.Tensor) -> None:  # fmt: skip
        """Write ``new_keys``/``new_values`` (``[kv_heads, T, dim]``, unit stride in dim) into
        the pool layer ``keys``/``values`` (``[kv_heads, pool slots, dim]``, rows
        contiguous, equal strides) at ``slots`` (``[T]`` int64, each in the pool). Mutates
        ``keys`` and ``values`` only; ValueError (nothing written) for a slot outside."""
        kv_heads, pool, dim = _pool(keys, values)
        _float32("new_keys", new_keys, 3)
        _float32("new_values", new_values, 3)
        tokens = new_keys.shape[1]
        for name, new in (("new_keys", new_keys), ("new_values", new_values)):
            if new.shape != (kv_heads, tokens, dim) or new.stride(2) != 1:
                raise ValueError(
                    f"{name}: shape {tuple(new.shape)}, strides {new.stride()} for {tokens} "
                    f"tokens of {kv_heads} kv heads of dim {dim} (unit stride in dim)"
                )
        _slots(slots, tokens)
        status = self._lib.prefixkv_store(
            keys.data_ptr(), values.data_ptr(), keys.stride(0), pool,
            new_keys.data_ptr(), new_keys.stride(0), new_keys.stride(1),
            new_values.data_ptr(), new_values.stride(0), new_values.stride(1),
            kv_heads, dim, tokens, slots.data_ptr(),
        )  # fmt: skip
        if status == abi.BAD_SLOT:
            raise ValueError(f"slots: a slot outside the pool's 0..{pool - 1}; nothing written")
        _check_status(status)

    def attend(self, items: AttendItems, query: torch.Tensor, keys: torch.Tensor,
               values: torch.Tensor, out: torch.Tensor, scale: float,
               softcap: float) -> None:  # fmt: skip
        """Attention of ``items``' members (see ``csrc/attention.c``): ``query`` ``[heads,
        T, dim]`` (unit stride in dim) over the pool layer ``keys``/``values`` (as in
        :meth:`store`), written into the members' rows of ``out`` (``[T, heads, dim]``,
        contiguous), which is all it mutates. ``softcap``: scaled scores ``s`` become
        ``softcap * tanh(s / softcap)``; ``math.inf`` leaves them (the limit). ValueError
        for a cap that is not positive, MemoryError when the library's scratch memory cannot
        be allocated."""
        if items.count == 0:
            return
        kv_heads, pool, dim = _pool(keys, values)
        _float32("query", query, 3)
        heads, rows = query.shape[0], query.shape[1]
        if query.shape[2] != dim or query.stride(2) != 1:
            raise ValueError(f"query: shape {tuple(query.shape)}, strides {query.stride()} "
                             f"for dim {dim} with unit stride")  # fmt: skip
        if (
            heads > INT32_MAX
            or heads % kv_heads
            or heads // kv_heads * items.max_members > self.lanes
        ):
            raise ValueError(
                f"query: {heads} heads over {kv_heads} kv heads for items of up to "
                f"{items.max_members} members ({self.lanes} lanes)"
            )
        _dense("out", out, 3)
        if out.shape != (rows, heads, dim):
            raise ValueError(f"out: a contiguous {(rows, heads, dim)} tensor expected, "
                             f"got {tuple(out.shape)}, strides {out.stride()}")  # fmt: skip
        if rows < items.query_rows or pool < items.pool_slots:
            raise ValueError(
                f"the items reach query row {items.query_rows - 1} and pool slot "
                f"{items.pool_slots - 1}; query has {rows} rows, the pool {pool} slots"
            )
        if not isinstance(scale, float | int) or not isinstance(softcap, float | int):
            raise TypeError(f"scale, softcap: numbers expected, not {scale!r}, {softcap!r}")
        if not softcap > 0:
            raise ValueError(f"softcap: a positive number (or inf) expected, got {softcap}")
        if items.count * kv_heads > INT32_MAX:
            raise ValueError(f"{items.count} items x {kv_heads} kv heads: too many jobs")
        args = abi.AttendArgs(
            abi.ATTEND_ARGS_SIZE, abi.ABI_VERSION, query.data_ptr(), query.stride(0),
            query.stride(1), keys.data_ptr(), values.data_ptr(), keys.stride(0),
            out.data_ptr(), *items.pointers, items.max_tokens, heads, kv_heads, dim,
            items.count, torch.get_num_threads(), float(scale), float(softcap),
        )  # fmt: skip
        _check_status(self._lib.prefixkv_attend(ctypes.byref(args)))

    def decoder(self, step: StepTensors, items: AttendItems, layers: Sequence[DecoderLayer],
                shape: DecoderShape, softcap: float) -> None:  # fmt: skip
        """One step through every layer of ``layers`` in one call (``csrc/decoder.c``): per
        layer what the lean pass runs kernel by kernel, bit for bit the same. ``step``'s
        hidden states are updated in place and each layer's keys and values written at its
        slots of its pool layer (all it mutates); ``items``: the step's attention work
        items (as :meth:`attend`); ``softcap`` as in :meth:`attend`. Checks in
        :func:`prefixkv.kernels.decoder.arguments`; ValueError (nothing written) for a slot
        outside the pool, MemoryError when scratch memory cannot be allocated."""
        from prefixkv.kernels.decoder import arguments

        args, table = arguments(step, items, layers, shape, softcap, self.lanes,
                                torch.get_num_threads())  # fmt: skip
        status = self._lib.prefixkv_decoder(ctypes.byref(args))
        del table  # kept alive through the call: args points into it
        if status == abi.BAD_SLOT:
            raise ValueError("slots: a slot outside the pool; nothing written")
        _check_status(status)


@functools.lru_cache(maxsize=4)
def load(cache_dir: Path | None = None) -> Kernels:
    """The native kernels (:func:`prefixkv.kernels.build.load`, once per process and cache
    directory). Raises NativeUnavailable when they cannot be built, loaded or spoken to."""
    library = build.load(cache_dir)
    try:
        return Kernels(library)
    except (AttributeError, RuntimeError) as exc:  # a function missing, another ABI
        raise build.NativeUnavailable(str(exc)) from exc


def _check_status(status: int) -> None:
    """Raises for a status code other than OK (``csrc/abi.h``)."""
    if status == abi.OK:
        return
    if status == abi.NO_MEMORY:
        raise MemoryError("the native kernel could not allocate its scratch memory")
    raise RuntimeError(f"the native library refused the call (status {status}: "
                       f"{_STATUS.get(status, 'unknown')})")  # fmt: skip


_STATUS = {
    abi.BAD_SIZE: "argument block of another size: library and prefixkv out of step",
    abi.BAD_VERSION: "argument block of another version: library and prefixkv out of step",
}


# The checks below are one boolean expression on the way through (each attribute read costs
# 50-150 ns and each call ~100 ns, at up to ~250 door calls a decode step); only a refusal
# works out what to say.


def _float32(name: str, tensor: torch.Tensor, ndim: int | None) -> None:
    """TypeError unless ``tensor`` is a dense (strided) float32 CPU tensor; ValueError unless
    it has ``ndim`` dimensions (any number for None)."""
    try:
        fine = (
            tensor.dtype is _F32
            and tensor.is_cpu
            and tensor.layout is _STRIDED
            and (ndim is None or tensor.dim() == ndim)
        )
    except AttributeError:  # not a tensor
        fine = False
    if not fine:
        _refuse_float32(name, tensor, ndim)


def _dense(name: str, tensor: torch.Tensor, ndim: int | None) -> None:
    """:func:`_float32`, and ValueError unless ``tensor`` is contiguous."""
    try:
        fine = (
            tensor.dtype is _F32
            and tensor.is_cpu
            and tensor.layout is _STRIDED
            and (ndim is None or tensor.dim() == ndim)
            and tensor.is_contiguous()
        )
    except AttributeError:  # not a tensor
        fine = False
    if not fine:
        _refuse_float32(name, tensor, ndim)
        raise ValueError(f"{name}: a contiguous tensor expected, got strides {tensor.stride()}")


def _refuse_float32(name: str, tensor: torch.Tensor, ndim: int | None) -> None:
    """Raises what :func:`_float32` refuses ``tensor`` for; returns if it would not."""
    if not isinstance(tensor, torch.Tensor) or tensor.dtype is not _F32 or not tensor.is_cpu:
        _refuse(name, tensor, "a float32 CPU tensor")
    if tensor.layout is not _STRIDED:
        _refuse(name, tensor, "a float32 CPU tensor")
    if ndim is not None and tensor.dim() != ndim:
        raise ValueError(f"{name}: {ndim} dimensions expected, got shape {tuple(tensor.shape)}")


def _weight(weight: PackedWeight) -> int:
    """The kernel's code for ``weight``'s format, once its ``data`` is checked: TypeError
    for another kind of object or data that is not a uint8 CPU tensor, ValueError for an
    unknown format, sizes the data does not hold, or strided data."""
    if not isinstance(weight, PackedWeight):
        raise TypeError(f"weight: a PackedWeight expected, not {type(weight).__name__}")
    code = formats.CODES.get(weight.format)
    if code is None:
        raise ValueError(f"weight: format one of {sorted(formats.CODES)}, not {weight.format!r}")
    data = weight.data
    if not isinstance(data, torch.Tensor) or data.dtype is not _U8 or not data.is_cpu:
        _refuse("weight.data", data, "a uint8 CPU tensor")
    if data.layout is not _STRIDED or not data.is_contiguous():
        raise ValueError(f"weight.data: a contiguous tensor expected, got {data.layout}, "
                         f"strides {data.stride()}")  # fmt: skip
    out, k = weight.out_features, weight.in_features
    if out < 1 or k < 1:
        raise ValueError(f"weight: {out} x {k} features: both must be positive")
    try:
        bytes_ = formats.block_bytes(weight.format, k)
    except ValueError as exc:  # a quantized format's k % 32
        raise ValueError(f"weight: {exc}") from None
    shape = (-(-out // formats.BLOCK), bytes_)
    if data.shape != shape:
        raise ValueError(f"weight.data: shape {tuple(data.shape)} does not hold {out} x {k} "
                         f"{weight.format} (expected {shape})")  # fmt: skip
    return code


def _pool(keys: torch.Tensor, values: torch.Tensor) -> tuple[int, int, int]:
    """``(kv_heads, slots, dim)`` of a pool layer: ``keys`` and ``values`` float32 CPU
    ``[kv_heads, slots, dim]`` with equal shapes and strides, each slot's row contiguous and
    slots adjacent (stride ``dim``), as the library indexes them."""
    _float32("keys", keys, 3)
    _float32("values", values, 3)
    kv_heads, slots, dim = keys.shape
    strides = keys.stride()
    if strides[1] != dim or strides[2] != 1:
        raise ValueError(f"keys: shape {tuple(keys.shape)}, strides {strides}: rows of {dim} "
                         f"floats, slot after slot, expected")  # fmt: skip
    if values.shape != keys.shape or values.stride() != strides:
        raise ValueError(f"values: shape {tuple(values.shape)}, strides {values.stride()}; "
                         f"keys have {tuple(keys.shape)}, {strides}")  # fmt: skip
    if not 0 < kv_heads <= INT32_MAX or not 0 < dim <= INT32_MAX:
        raise ValueError(f"keys: {kv_heads} kv heads of dim {dim}: each must be 1 to 2^31 - 1")
    return kv_heads, slots, dim


def _slots(slots: torch.Tensor, count: int) -> None:
    """Raises unless ``slots`` is a contiguous int64 CPU tensor of shape ``[count]`` (the pool
    slots a call writes: TypeError for another kind of object, ValueError for its shape)."""
    try:
        plain = slots.dtype is _I64 and slots.is_cpu and slots.layout is _STRIDED
    except AttributeError:  # not a tensor
        plain = False
    if not plain:
        _refuse("slots", slots, "an int64 CPU tensor")
    if slots.shape != (count,) or not slots.is_contiguous():
        raise ValueError(f"slots: a contiguous [{count}] tensor expected, got {tuple(slots.shape)}")


def _refuse(name: str, tensor: object, wanted: str) -> NoReturn:
    """TypeError saying what ``tensor`` is and what was ``wanted`` instead."""
    if isinstance(tensor, torch.Tensor):
        kind = f"{tensor.dtype} on {tensor.device}"
        if tensor.layout is not _STRIDED:
            kind += f" ({tensor.layout})"
    else:
        kind = type(tensor).__name__
    raise TypeError(f"{name}: the native kernels take {wanted}, not {kind}")

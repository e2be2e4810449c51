"""The Python mirror of ``csrc/abi.h``: the attention and decoder calls' argument blocks as
``ctypes.Structure``s, the status codes, and every exported function's C signature.

Only :mod:`prefixkv.kernels.ops` and its helper :mod:`prefixkv.kernels.decoder` use it. With
``argtypes`` declared, ctypes refuses a call with too few arguments or one it cannot
convert; the attention and decoder calls take one pointer to :class:`AttendArgs` or
:class:`DecoderArgs`, whose ``size`` and ``version`` the library checks before reading more.
"""

from __future__ import annotations

import ctypes

ABI_VERSION = 9  # PREFIXKV_ABI_VERSION
OK, NO_MEMORY, BAD_SIZE, BAD_VERSION, BAD_SLOT = 0, -1, -2, -3, -4

_i32, _i64, _u32, _f32, _ptr = (
    ctypes.c_int32,
    ctypes.c_int64,
    ctypes.c_uint32,
    ctypes.c_float,
    ctypes.c_void_p,
)


class AttendArgs(ctypes.Structure):
    """``struct prefixkv_attend_args``, field for field (see ``csrc/abi.h``)."""

    _fields_ = [
        ("size", _u32),
        ("version", _u32),
        ("query", _ptr),
        ("q_head", _i64),
        ("q_row", _i64),
        ("keys", _ptr),
        ("values", _ptr),
        ("kv_stride", _i64),
        ("out", _ptr),
        ("member_start", _ptr),
        ("rows", _ptr),
        ("sees", _ptr),
        ("first", _ptr),
        ("token_start", _ptr),
        ("slot", _ptr),
        ("owner", _ptr),
        ("max_tokens", _i64),
        ("heads", _i32),
        ("kv_heads", _i32),
        ("dim", _i32),
        ("items", _i32),
        ("threads", _i32),
        ("scale", _f32),
        ("softcap", _f32),
    ]


ATTEND_ARGS_SIZE = ctypes.sizeof(AttendArgs)


class DecoderLayer(ctypes.Structure):
    """``struct prefixkv_decoder_layer``, field for field (see ``csrc/abi.h``)."""

    _fields_ = [
        ("attn_norm", _ptr),
        ("mlp_norm", _ptr),
        ("qkv", _ptr),
        ("o_proj", _ptr),
        ("gate_up", _ptr),
        ("down", _ptr),
        ("qkv_bias", _ptr),
        ("o_bias", _ptr),
        ("gate_up_bias", _ptr),
        ("down_bias", _ptr),
        ("formats", _i32 * 4),
        ("attn_eps", _f32),
        ("mlp_eps", _f32),
        ("scale", _f32),
    ]


class DecoderArgs(ctypes.Structure):
    """``struct prefixkv_decoder_args``, field for field (see ``csrc/abi.h``)."""

    _fields_ = [
        ("size", _u32),
        ("version", _u32),
        ("hidden", _ptr),
        ("cos", _ptr),
        ("sin", _ptr),
        ("pool", _ptr),
        ("slots", _ptr),
        ("layers", _ptr),  # DecoderLayer[layer_count]
        ("member_start", _ptr),
        ("item_rows", _ptr),
        ("sees", _ptr),
        ("first", _ptr),
        ("token_start", _ptr),
        ("slot", _ptr),
        ("owner", _ptr),
        ("max_tokens", _i64),
        ("rows", _i64),
        ("hidden_size", _i64),
        ("width", _i64),
        ("pool_slots", _i64),
        ("layer_count", _i32),
        ("heads", _i32),
        ("kv_heads", _i32),
        ("dim", _i32),
        ("items", _i32),
        ("threads", _i32),
        ("softcap", _f32),
    ]


DECODER_ARGS_SIZE = ctypes.sizeof(DecoderArgs)
DECODER_LAYER_SIZE = ctypes.sizeof(DecoderLayer)

_SIGNATURES: dict[str, tuple[list[type], type | None]] = {
    "prefixkv_abi_version": ([], _i32),
    "prefixkv_attend_args_size": ([], _i32),
    "prefixkv_lanes": ([], _i32),
    "prefixkv_linear_block": ([], _i32),
    "prefixkv_decoder_args_size": ([], _i32),
    "prefixkv_decoder_layer_size": ([], _i32),
    # which path forms the integer-dot formats' sums: 0 generic C, 1 AVX512-VNNI, 2 AVX2
    "prefixkv_int8_path": ([], _i32),
    "prefixkv_attend": ([ctypes.POINTER(AttendArgs)], _i32),
    "prefixkv_decoder": ([ctypes.POINTER(DecoderArgs)], _i32),
    # keys, values, kv stride, pool slots; new keys, head and row strides; new values, the
    # same; kv heads, dim, tokens, slots
    "prefixkv_store": (
        [_ptr, _ptr, _i64, _i64, _ptr, _i64, _i64, _ptr, _i64, _i64, _i32, _i32, _i64, _ptr],
        _i32,
    ),
    # x, rows, dim, x row stride, weight, eps, out
    "prefixkv_rms_norm": ([_ptr, _i64, _i64, _i64, _ptr, _f32, _ptr], None),
    # gate_up, rows, width, row stride, out, threads
    "prefixkv_silu_mul": ([_ptr, _i64, _i64, _i64, _ptr, _i32], None),
    # x (rotated in place), rows, heads, dim, x row stride, cos, sin, threads
    "prefixkv_rotary": ([_ptr, _i64, _i64, _i64, _i64, _ptr, _ptr, _i32], None),
    # format code, in features -> bytes of one column block (-1: no such format or size)
    "prefixkv_linear_block_bytes": ([_i32, _i64], _i64),
    # x, rows, in features, format code, packed, bias, out features, out, threads
    "prefixkv_linear": ([_ptr, _i64, _i64, _i32, _ptr, _ptr, _i64, _ptr, _i32], _i32),
}


def declare(library: ctypes.CDLL) -> None:
    """Set every exported function's ``argtypes`` and ``restype`` on ``library``, then check
    that it was built against this ABI: RuntimeError naming the difference otherwise.
    Mutates ``library``'s function objects only."""
    for name, (argtypes, restype) in _SIGNATURES.items():
        function = getattr(library, name)
        function.argtypes, function.restype = argtypes, restype
    version, size = library.prefixkv_abi_version(), library.prefixkv_attend_args_size()
    decoder = (library.prefixkv_decoder_args_size(), library.prefixkv_decoder_layer_size())
    if (version, size) != (ABI_VERSION, ATTEND_ARGS_SIZE):
        raise RuntimeError(
            f"the native library speaks ABI {version} with a {size}-byte attention block; "
            f"this prefixkv speaks ABI {ABI_VERSION} with {ATTEND_ARGS_SIZE} bytes"
        )
    if decoder != (DECODER_ARGS_SIZE, DECODER_LAYER_SIZE):
        raise RuntimeError(
            f"the native library's decoder block and layer entry are {decoder[0]} and "
            f"{decoder[1]} bytes; this prefixkv's {DECODER_ARGS_SIZE} and {DECODER_LAYER_SIZE}"
        )

"""Lossy block codecs for the lower tiers (``--tier-compression int8|int4``; off by default).

Asymmetric integer quantization in the manner the KIVI paper describes: keys per *channel*
(for each layer, kv head and head_dim channel, the range over the block's tokens: key outliers
sit in fixed channels), values per *token* (for each layer, kv head and token, the range over
head_dim). An element ``x`` is stored as an unsigned code ``q`` in ``[0, 2**bits - 1]`` and
restored as ``zero + q * step``.

Payload of a block ``[L, 2, H, S, D]`` (layers, keys/values, kv heads, tokens, head_dim), in
this order, in native byte order (little-endian on x86 and ARM)::

    key zero points    [L, H, D] float16
    key steps          [L, H, D] float16
    value zero points  [L, H, S] float16
    value steps        [L, H, S] float16
    codes              keys [L, H, S, D], then values [L, H, S, D], uint8: one code per
                       byte (int8) or two (int4: element 2i in the low nibble, 2i+1 in the high)

Zero points and steps are float16 (4 bytes per group, counted in every size reported) and are
rounded *outward*: the zero point down to a float16 at or below the group's minimum, the step
up so that ``zero + (2**bits - 1) * step`` reaches the maximum. Every element is then within
half a step of its restored value (up to float32 rounding, ~1e-7 relative). A group whose
range is zero and whose value is a float16 gets step 1 and code 0: restored exactly. A block
holding NaN, an infinity, or a value beyond float16's range (|x| > 65504) cannot be encoded:
encode raises ValueError, and that block stays out of the compressed tier (SmolLM2's KV peaks
near |x| = 29).
"""

from __future__ import annotations

import torch

from prefixkv.cache.layout import KVLayout
from prefixkv.tiers.codec import BlockCodec, RawCodec, block_shape

__all__ = ["CODECS", "Int4Codec", "Int8Codec", "QuantizedCodec", "codec_for_id", "payload_bytes"]

_PARAM_BYTES = 2  # float16 zero points and steps


class QuantizedCodec:
    """KIVI-style asymmetric quantization with ``bits`` bits per element (see the module).
    Stateless; thread-safe. Subclasses fix ``id``, ``name`` and ``bits``."""

    id: int
    name: str
    bits: int

    @property
    def levels(self) -> int:
        """The largest code."""
        return (1 << self.bits) - 1

    def payload_bytes(self, layout: KVLayout, block_size: int) -> int:
        """Bytes of one block's payload: a pure function of the layout and the block size."""
        groups = layout.num_layers * layout.num_kv_heads * (layout.head_dim + block_size)
        elements = 2 * layout.num_layers * layout.num_kv_heads * block_size * layout.head_dim
        return 2 * _PARAM_BYTES * groups + elements * self.bits // 8

    def encode(self, block: torch.Tensor) -> bytes:
        """``block``: ``[layers, 2, kv_heads, block_size, head_dim]``, any float dtype."""
        if block.dim() != 5 or block.shape[1] != 2:
            raise ValueError(
                f"a block is [layers, 2, kv_heads, tokens, dim], got {tuple(block.shape)}"
            )
        x = block.detach().to(device="cpu", dtype=torch.float32)
        keys, values = x[:, 0], x[:, 1]  # [L, H, S, D]
        key_low, key_high = keys.amin(dim=2), keys.amax(dim=2)  # [L, H, D]
        value_low, value_high = values.amin(dim=3), values.amax(dim=3)  # [L, H, S]
        zero, step = self._params(  # keys then values, in one pass
            torch.cat((key_low.view(-1), value_low.view(-1))),
            torch.cat((key_high.view(-1), value_high.view(-1))),
        )
        keys_at = key_low.numel()
        key_zero, value_zero = zero[:keys_at].view_as(key_low), zero[keys_at:].view_as(value_low)
        key_step, value_step = step[:keys_at].view_as(key_low), step[keys_at:].view_as(value_low)
        codes = torch.cat(
            (
                self._codes(keys, key_zero.unsqueeze(2), key_step.unsqueeze(2)).view(-1),
                self._codes(values, value_zero.unsqueeze(3), value_step.unsqueeze(3)).view(-1),
            )
        )
        if self.bits == 4:  # an even count: 2 * L * H * S * D
            codes = codes[0::2] | (codes[1::2] << 4)
        params = torch.cat((zero[:keys_at], step[:keys_at], zero[keys_at:], step[keys_at:]))
        payload: bytes = torch.cat((params.view(torch.uint8), codes)).numpy().tobytes()
        return payload

    def decode_into(self, payload: memoryview, out: torch.Tensor) -> None:
        layout = KVLayout(out.shape[0], out.shape[2], out.shape[4], out.dtype)
        out.copy_(self.decode(payload, layout, out.shape[3]))

    def decode(self, payload: memoryview, layout: KVLayout, block_size: int) -> torch.Tensor:
        """The block back, ``[layers, 2, kv_heads, block_size, head_dim]`` in the layout's
        dtype on the CPU. Raises ValueError if ``payload`` has the wrong size."""
        expected = self.payload_bytes(layout, block_size)
        if len(payload) != expected:
            raise ValueError(f"an {self.name} block has {expected} bytes, got {len(payload)}")
        if payload.readonly:
            payload = memoryview(bytearray(payload))  # torch.frombuffer wants a writable one
        raw = torch.frombuffer(payload, dtype=torch.uint8)
        layers, _, heads, size, dim = block_shape(layout, block_size)
        key_groups, value_groups = layers * heads * dim, layers * heads * size
        split = 2 * _PARAM_BYTES * (key_groups + value_groups)
        params = raw[:split].view(torch.float16).float()
        key_zero, key_step = params[:key_groups], params[key_groups : 2 * key_groups]
        value_zero, value_step = params[2 * key_groups :].view(2, value_groups)
        codes = raw[split:]
        if self.bits == 4:
            codes = torch.stack((codes & 15, codes >> 4), dim=1)
        q = codes.view(2, layers, heads, size, dim).float()
        out = torch.empty((layers, 2, heads, size, dim), dtype=torch.float32)
        torch.addcmul(
            key_zero.view(layers, heads, 1, dim),
            q[0],
            key_step.view(layers, heads, 1, dim),
            out=out[:, 0],
        )
        torch.addcmul(
            value_zero.view(layers, heads, size, 1),
            q[1],
            value_step.view(layers, heads, size, 1),
            out=out[:, 1],
        )
        return out.to(layout.dtype)

    def _params(self, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float16 zero points and steps of groups spanning ``[low, high]``, rounded outward."""
        zero = low.to(torch.float16)
        zero = torch.where(zero.float() > low, zero.nextafter(zero.new_tensor(-torch.inf)), zero)
        exact = (high - zero.float()) / self.levels
        step = exact.to(torch.float16)
        step = torch.where(step.float() < exact, step.nextafter(step.new_tensor(torch.inf)), step)
        step = torch.where(step == 0, step.new_tensor(1.0), step)  # a constant float16 group
        if not bool(torch.isfinite(zero).all() and torch.isfinite(step).all()):
            raise ValueError(
                f"{self.name}: the block holds NaN, an infinity or a range beyond float16"
                " (|x| > 65504); store it raw"
            )
        return zero, step

    def _codes(self, x: torch.Tensor, zero: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        q = (x - zero.float()).div_(step.float()).round_().clamp_(0, self.levels)
        return q.to(torch.uint8).contiguous()


class Int8Codec(QuantizedCodec):
    """8 bits per element, plus float16 zero points and steps."""

    id = 1
    name = "int8"
    bits = 8


class Int4Codec(QuantizedCodec):
    """4 bits per element (two per byte), plus float16 zero points and steps."""

    id = 2
    name = "int4"
    bits = 4


CODECS: dict[str, BlockCodec] = {"none": RawCodec(), "int8": Int8Codec(), "int4": Int4Codec()}
"""By ``--tier-compression`` value."""

_BY_ID: dict[int, BlockCodec] = {codec.id: codec for codec in CODECS.values()}


def codec_for_id(codec_id: int) -> BlockCodec:
    """The codec that wrote a record's payload (its header's codec byte)."""
    try:
        return _BY_ID[codec_id]
    except KeyError:
        known = ", ".join(f"{c.id} ({c.name})" for c in _BY_ID.values())
        raise ValueError(f"unknown block codec id {codec_id!r}; known: {known}") from None


def payload_bytes(codec: BlockCodec, layout: KVLayout, block_size: int) -> int:
    """Bytes of one block's payload under ``codec`` (scales included)."""
    return codec.payload_bytes(layout, block_size)

"""Quantization in the graph: the QuantSpec annotation, the integer math every target must match, and the
quantized-linear ops of the crossgraph dialect.

Storage follows what ONNX Runtime's kernels read, so the ONNX lowering stores the graph's tensors as they are
and no target repacks at run time:

- weight-only (`weight_only_linear`, and `weight_only_embedding` for lookups in a table stored the same way):
  com.microsoft MatMulNBits' layout, whose rows GatherBlockQuantized also reads. The weight W [N, K] (output features
  first) is cut along K into blocks of `block_size` (a power of two >= 16); each block has a float scale and an
  unsigned zero point (2^(bits-1) when symmetric, then not stored). `qweight` is uint8 [N, n_blocks,
  block_size * bits / 8], 4-bit values two to a byte, low nibble first; stored zero points are uint8 [N,
  ceil(n_blocks * bits / 8)], packed the same way. Per-channel is one block per row: block_size is the power of
  two >= K and the padding holds the zero point (it dequantizes to 0 and no input reads it).
- dynamic and static int8 (`dynamic_quant_linear`, `static_quant_linear`): `qweight` int8 [K, N] (MatMul's
  layout), symmetric per output channel, `w_scale` float32 [N]. Activations are uint8 with a zero point:
  dynamic ones as ONNX's DynamicQuantizeLinear computes them per tensor on every call, static ones with a scale
  and zero point fixed by calibration.

Every linear computes in float32 and returns x's dtype (the embedding returns float32); the integer products are
exact (float64 accumulation).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from crossgraph.graphs.annotations import Annotation

SCHEMES = ("int8_weight_only", "int4_weight_only", "dynamic_int8", "static_int8", "float16", "bfloat16")
"""Every quantization scheme a QuantSpec can name."""


@dataclasses.dataclass(frozen=True)
class QuantSpec(Annotation):
    """How a node was quantized: the scheme, the weight's bits, its grouping (`group_size` 0: one group per
    output channel) and symmetry, and for static int8 the activation's calibrated scale and zero point."""

    kind = "quant"
    scheme: str
    bits: int = 8
    group_size: int = 0
    symmetric: bool = True
    activation_scale: float | None = None
    activation_zero_point: int | None = None

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ValueError(f"unknown quantization scheme {self.scheme!r}; known: {', '.join(SCHEMES)}")


# ---- weight-only storage (MatMulNBits layout) -----------------------------------------------------------------
def storage_block(k: int, group_size: int) -> int:
    """The block size stored for a K-long row: `group_size`, or for per-channel (0) the power of two >= K."""
    return group_size or max(16, 1 << (k - 1).bit_length())


def pack(values: Tensor, bits: int) -> Tensor:
    """uint8 values < 2^bits along the last dim, packed low bits first (4-bit: two per byte; 8-bit: as is)."""
    if bits == 8:
        return values.to(torch.uint8)
    per_byte = 8 // bits
    if values.shape[-1] % per_byte:
        values = torch.nn.functional.pad(values, (0, per_byte - values.shape[-1] % per_byte))
    grouped = values.to(torch.uint8).reshape(*values.shape[:-1], -1, per_byte)
    packed = torch.zeros(grouped.shape[:-1], dtype=torch.uint8, device=values.device)
    for i in range(per_byte):
        packed |= grouped[..., i] << (bits * i)
    return packed


def unpack(packed: Tensor, bits: int, count: int) -> Tensor:
    """The first `count` values of `pack`'s output along the last dim, as uint8."""
    if bits == 8:
        return packed[..., :count]
    mask = (1 << bits) - 1
    parts = [(packed >> (bits * i)) & mask for i in range(8 // bits)]
    return torch.stack(parts, dim=-1).reshape(*packed.shape[:-1], -1)[..., :count]


def quantize_weight(weight: Tensor, bits: int, group_size: int = 0,
                    symmetric: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
    """W [N, K] (float) -> (qweight, scales, zero_points or None) in MatMulNBits' layout (module docstring).
    Symmetric: scale = absmax / (2^(bits-1) - 1). Asymmetric: the block's range with 0 in it over 2^bits - 1."""
    n, k = weight.shape
    block = storage_block(k, group_size)
    blocks = -(-k // block)
    w = torch.nn.functional.pad(weight.float(), (0, blocks * block - k)).reshape(n, blocks, block)
    top = (1 << bits) - 1
    if symmetric:
        scales = w.abs().amax(-1) / ((1 << (bits - 1)) - 1)
        zero = torch.full_like(scales, 1 << (bits - 1))
    else:
        low, high = w.amin(-1).clamp(max=0), w.amax(-1).clamp(min=0)
        scales = (high - low) / top
        zero = torch.where(scales > 0, torch.round(-low / torch.where(scales > 0, scales, 1)), 0).clamp(0, top)
    scales = torch.where(scales > 0, scales, 1.0)
    q = torch.clamp(torch.round(w / scales[..., None]) + zero[..., None], 0, top)
    qweight = pack(q.to(torch.uint8), bits)  # the zero padding quantizes to the zero point
    zero_points = None if symmetric else pack(zero.to(torch.uint8), bits)
    return qweight, scales.float(), zero_points


def dequantize_weight(qweight: Tensor, scales: Tensor, zero_points: Tensor | None, k: int, bits: int) -> Tensor:
    """W [N, K] float32 back from MatMulNBits' layout: (q - zero point) * scale per block."""
    n, blocks, _ = qweight.shape
    q = unpack(qweight, bits, qweight.shape[-1] * 8 // bits).reshape(n, -1).float()
    block = q.shape[-1] // blocks
    zero = (torch.full_like(scales, 1 << (bits - 1)) if zero_points is None
            else unpack(zero_points, bits, blocks).float())
    w = (q.reshape(n, blocks, block) - zero[..., None]) * scales[..., None].float()
    return w.reshape(n, -1)[:, :k]


# ---- int8 with quantized activations --------------------------------------------------------------------------
def quantize_weight_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """W [K, N] (MatMul's layout) -> (int8 [K, N], float32 scale [N]): symmetric per output channel, /127."""
    scale = weight.float().abs().amax(0) / 127
    scale = torch.where(scale > 0, scale, 1.0)
    return torch.clamp(torch.round(weight.float() / scale), -127, 127).to(torch.int8), scale


def dynamic_quantize(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """ONNX DynamicQuantizeLinear: uint8 x, the float32 scale of x's range widened to hold 0 over 255, and the
    zero point round(-min / scale) (ties to even, as ONNX and torch.round)."""
    x = x.float()
    low, high = x.min().clamp(max=0), x.max().clamp(min=0)
    scale = (high - low) / 255
    safe = torch.where(scale > 0, scale, 1.0)
    zero = torch.clamp(torch.round(-low / safe), 0, 255)
    return torch.clamp(torch.round(x / safe) + zero, 0, 255), scale, zero


def static_quantize(x: Tensor, scale: float, zero_point: int) -> Tensor:
    """ONNX QuantizeLinear to uint8 with a fixed scale and zero point (ties to even), as float values."""
    return torch.clamp(torch.round(x.float() / scale) + zero_point, 0, 255)


def _integer_matmul(xq: Tensor, x_zero: Tensor | int, qweight: Tensor) -> Tensor:
    """(xq - zero) @ qweight over integer-valued tensors, exact (float64: products and sums stay < 2^53)."""
    return (xq.double() - x_zero) @ qweight.double()


# ---- the ops ----------------------------------------------------------------------------------------------------
@torch.library.custom_op("crossgraph::weight_only_linear", mutates_args=())
def weight_only_linear(x: Tensor, qweight: Tensor, scales: Tensor, zero_points: Tensor | None,
                       bias: Tensor | None, k: int, bits: int, block_size: int) -> Tensor:
    """x [..., K] @ W^T + bias with W [N, K] stored in `bits` (4 or 8) in MatMulNBits' layout."""
    w = dequantize_weight(qweight, scales, zero_points, k, bits)
    out = x.float() @ w.T
    return (out if bias is None else out + bias.float()).to(x.dtype)


@weight_only_linear.register_fake
def _(x: Tensor, qweight: Tensor, scales: Tensor, zero_points: Tensor | None, bias: Tensor | None,
      k: int, bits: int, block_size: int) -> Tensor:
    torch._check(x.shape[-1] == k, lambda: "x's last dim must be the weight's K")
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


def embedding_rows(qweight: Tensor, scales: Tensor, zero_points: Tensor | None, indices: Tensor, k: int,
                   bits: int) -> Tensor:
    """The rows `indices` of a table stored in MatMulNBits' layout, dequantized: float32 [..., K]."""
    flat = indices.reshape(-1)
    zeros = None if zero_points is None else zero_points[flat]
    rows = dequantize_weight(qweight[flat], scales[flat], zeros, k, bits)
    return rows.reshape(*indices.shape, k)


@torch.library.custom_op("crossgraph::weight_only_embedding", mutates_args=())
def weight_only_embedding(qweight: Tensor, scales: Tensor, zero_points: Tensor | None, indices: Tensor, k: int,
                          bits: int, block_size: int) -> Tensor:
    """The rows `indices` of a table [V, K] stored like weight_only_linear's W (rows quantized along K), as
    float32 [..., K]: an embedding lookup. One stored table serves a tied embedding and LM head alike."""
    return embedding_rows(qweight, scales, zero_points, indices, k, bits)


@weight_only_embedding.register_fake
def _(qweight: Tensor, scales: Tensor, zero_points: Tensor | None, indices: Tensor, k: int, bits: int,
      block_size: int) -> Tensor:
    return scales.new_empty((*indices.shape, k))


@torch.library.custom_op("crossgraph::dynamic_quant_linear", mutates_args=())
def dynamic_quant_linear(x: Tensor, qweight: Tensor, w_scale: Tensor, bias: Tensor | None) -> Tensor:
    """x [..., K] quantized per call (DynamicQuantizeLinear), times int8 qweight [K, N], scaled by
    x_scale * w_scale [N], plus bias: ONNX Runtime's DynamicQuantizeMatMul."""
    xq, scale, zero = dynamic_quantize(x)
    out = (_integer_matmul(xq, zero, qweight).float() * (scale * w_scale.float()))
    return (out if bias is None else out + bias.float()).to(x.dtype)


@dynamic_quant_linear.register_fake
def _(x: Tensor, qweight: Tensor, w_scale: Tensor, bias: Tensor | None) -> Tensor:
    torch._check(x.shape[-1] == qweight.shape[0], lambda: "x's last dim must be the weight's K")
    return x.new_empty((*x.shape[:-1], qweight.shape[1]))


@torch.library.custom_op("crossgraph::static_quant_linear", mutates_args=())
def static_quant_linear(x: Tensor, qweight: Tensor, w_scale: Tensor, bias: Tensor | None, x_scale: float,
                        x_zero_point: int) -> Tensor:
    """x [..., K] through QuantizeLinear/DequantizeLinear (uint8, calibrated scale and zero point), times the
    dequantized int8 qweight [K, N] (per-channel w_scale [N]), plus bias: an ONNX QDQ MatMul."""
    xq = static_quantize(x, x_scale, x_zero_point)
    out = _integer_matmul(xq, x_zero_point, qweight).float() * (x_scale * w_scale.float())
    return (out if bias is None else out + bias.float()).to(x.dtype)


@static_quant_linear.register_fake
def _(x: Tensor, qweight: Tensor, w_scale: Tensor, bias: Tensor | None, x_scale: float,
      x_zero_point: int) -> Tensor:
    torch._check(x.shape[-1] == qweight.shape[0], lambda: "x's last dim must be the weight's K")
    return x.new_empty((*x.shape[:-1], qweight.shape[1]))


QUANT_OPS: dict[str, torch._ops.OpOverload] = {
    "weight_only_linear": torch.ops.crossgraph.weight_only_linear.default,
    "weight_only_embedding": torch.ops.crossgraph.weight_only_embedding.default,
    "dynamic_quant_linear": torch.ops.crossgraph.dynamic_quant_linear.default,
    "static_quant_linear": torch.ops.crossgraph.static_quant_linear.default,
}
"""The quantized dialect ops by name (part of dialect.OPS)."""

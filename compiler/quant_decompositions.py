"""The quantized-linear ops of the crossgraph dialect (graphs/quant.py) as ATen, for inductor and tensorrt: the
reference's own quantization functions, an exact int8 matmul where activations are quantized.

Decisions, measured with torch 2.13 through AOTInductor on 2 shared, busy AVX-512 cores (2 threads, load average
3-14: ranges are the medians of three runs of 12-20 calls), x [8, 128, 768] times a 768 -> 3072 weight (GPT-2
small's MLP); eager float32 `x @ W.T` took 72-108 ms in the same runs:

- weight_only_linear dequantizes ((q - zero point) * scale, `graphs.quant.dequantize_weight`) and multiplies in
  float32. Frozen (the default), Inductor folds the dequantized weight into a float32 constant and prepacks it
  for oneDNN: a plain float32 GEMM, 8-bit per-channel 88-132 ms, 4-bit group 32 48-83 ms (the same GEMM; the
  spread is the load) against 142-214 ms unfrozen, which dequantizes on every call; but the package holds the
  float32 weight: 11-14 MB against 3-5 MB unfrozen.
  Inductor's int8 weight-only kernel, `aten._weight_int8pack_mm(x, int8 W [N, K], scales [N])`, fits 8-bit
  symmetric per-channel weights, traces through `run_decompositions` and compiles (its weight stays int8, 3.9
  MB), but takes 2015-3374 ms compiled at that size; eager it is slower than float32 at every batch tried:
  3436 / 214 / 44 / 12 ms at M = 1024 / 64 / 8 / 1 against 87 / 32 / 24 / 0.19 ms. So it is not used.
- dynamic_quant_linear and static_quant_linear quantize x with the reference's own functions and multiply exactly
  in int32 with `torch._int_mm` (int8 x int8 -> int32, oneDNN): (xq - 128) fits int8, and (128 - zero point) *
  the weight's column sums (a constant once frozen) restores the zero point; int32 holds every sum (|K * 255 *
  127| < 2^31 for K < 66,000). Dynamic 19-83 ms, static 43-72 ms, against 77-123 and 64-100 ms for a float32
  GEMM on the integer values (which rounds once a sum passes 2^24) and 204 ms for the reference's float64 one;
  the GEMMs alone, eager: `_int_mm` 29 ms (best 6), float32 77 ms (best 58). Inductor fuses the scale multiply
  and the bias add into one kernel, where the C++ compiler may contract them into a fused multiply-add: with a
  bias the result can be half an ulp of the product from the reference's; without one it is bitwise equal.
- Torch-TensorRT shares this table; it has no converter for `_int_mm` that we know of, so that node would run as
  a PyTorch fallback on CUDA, where `_int_mm` needs more than 16 rows and K and N multiples of 8 (untested here:
  no GPU).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from crossgraph.graphs.quant import QUANT_OPS, dequantize_weight, dynamic_quantize, embedding_rows, static_quantize


def _finish(out: Tensor, bias: Tensor | None, dtype: torch.dtype) -> Tensor:
    """out (float32) plus bias in float32, cast to x's dtype, as every op of the reference ends."""
    return (out if bias is None else out + bias.float()).to(dtype)


def _integer_matmul(xq: Tensor, zero: Tensor | int, qweight: Tensor) -> Tensor:
    """(xq - zero) @ qweight exact in int32 over xq [..., K] of uint8 values (float) and int8 qweight [K, N]:
    one int8 `_int_mm` of (xq - 128) on x as 2-D, plus (128 - zero) * the weight's column sums."""
    low = (xq - 128).to(torch.int8)
    dot = torch._int_mm(low.reshape(-1, low.shape[-1]), qweight).reshape(*xq.shape[:-1], qweight.shape[1])
    return dot + (128 - zero) * qweight.sum(0, dtype=torch.int32)


def weight_only_linear(x: Tensor, qweight: Tensor, scales: Tensor, zero_points: Tensor | None,
                       bias: Tensor | None, k: int, bits: int, block_size: int) -> Tensor:
    """x @ W^T + bias with W dequantized to float32 (frozen: a constant Inductor prepacks for oneDNN)."""
    w = dequantize_weight(qweight, scales, zero_points, k, bits)
    return _finish(x.float() @ w.T, bias, x.dtype)


def weight_only_embedding(qweight: Tensor, scales: Tensor, zero_points: Tensor | None, indices: Tensor, k: int,
                          bits: int, block_size: int) -> Tensor:
    """The looked-up rows dequantized (the reference's math): the table stays quantized, only rows are expanded."""
    return embedding_rows(qweight, scales, zero_points, indices, k, bits)


def dynamic_quant_linear(x: Tensor, qweight: Tensor, w_scale: Tensor, bias: Tensor | None) -> Tensor:
    """x quantized per call as the reference does, an exact int8 matmul, scaled by x_scale * w_scale."""
    xq, scale, zero = dynamic_quantize(x)
    out = _integer_matmul(xq, zero.to(torch.int32), qweight).float() * (scale * w_scale.float())
    return _finish(out, bias, x.dtype)


def static_quant_linear(x: Tensor, qweight: Tensor, w_scale: Tensor, bias: Tensor | None, x_scale: float,
                        x_zero_point: int) -> Tensor:
    """x quantized with its calibrated scale and zero point, an exact int8 matmul, scaled by x_scale * w_scale."""
    xq = static_quantize(x, x_scale, x_zero_point)
    out = _integer_matmul(xq, x_zero_point, qweight).float() * (x_scale * w_scale.float())
    return _finish(out, bias, x.dtype)


QUANT_DECOMPOSITIONS: dict[torch._ops.OpOverload, Callable[..., Any]] = {
    QUANT_OPS["weight_only_linear"]: weight_only_linear,
    QUANT_OPS["weight_only_embedding"]: weight_only_embedding,
    QUANT_OPS["dynamic_quant_linear"]: dynamic_quant_linear,
    QUANT_OPS["static_quant_linear"]: static_quant_linear,
}
"""The quantized ops' ATen forms (part of dialect_decompositions.DECOMPOSITIONS)."""

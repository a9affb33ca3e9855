"""The quantized-linear ops of the crossgraph dialect (graphs/quant.py) in JAX, computed in float32 (cast back to
x's dtype) with the reference's integer math.

Decisions, measured with jax 0.10 on 2 shared, busy CPU cores at GPT-2 small's MLP size (x [1024, 768] times a
768 -> 3072 weight; weights passed as arguments, as the jax target does; medians of 15 interleaved jitted calls):

- weight_only_linear dequantizes the weight ((q - zero point) * scale, float32) and runs one dot. Folding the
  dequantization into the dot instead (x @ (q - zero point) per block, the scale applied after it) was measured:
  4-bit group 32: dequantize 26-30 ms, fold 332-349 ms (24 dots of K = 32 and a [24, M, N] float32 partial
  summed over blocks); 8-bit per-channel: dequantize 26 ms, x @ (q - zero point) then scale 26.5 ms; a plain
  float32 dot of the same size 26 ms. XLA's CPU dot has no float x int8 kernel (given int8 or int16 operands it
  converts them: 51-55 ms against 48 in a busier run), so the fold saves nothing per-channel and multiplies the
  work group-wise; dequantizing costs ~1 ms and leaves one dense GEMM.
- dynamic and static int8 run an exact integer dot: (xq - 128) as int8 times the int8 weight into int32 (XLA's CPU
  int8 GEMM), plus (128 - zero point) * the weight's column sums. Dynamic: 19 ms (static 20), where int32 x int32
  takes 80 ms and a float32 dot of the integer values 27 ms (and rounds once a sum passes 2^24). int32 holds
  every sum: |K * 255 * 127| < 2^31 for K < 66,000.
- Division is IEEE division as in the reference: XLA rewrites x / constant and x / broadcast(scalar) into a
  multiplication by the reciprocal, which rounds differently in about half the elements and so moves a value
  sitting next to a rounding tie to the other quantization step (over 300 random x [64, 256], without it 212 got
  a scale 1 ulp off and 12 of 4.9M values another step); `_divide` hides the divisor behind an optimization
  barrier (XLA still fuses the division, no measurable cost).
- The scale multiply and the bias add stay two roundings, as ONNX Runtime's QGEMM output processor and the
  reference compute them: unguarded, XLA contracted them into a fused multiply-add, and 26-28% of a biased int8
  linear's outputs came out an ulp off, enough to move activations next to a rounding tie of the next quantized op
  (issue 17); `_scale_and_add` keeps them apart, and the int8 ops are now bitwise the reference's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from crossgraph.compiler.jaxlower.registry import op
from crossgraph.graphs.dialect import OPS

Array = jax.Array


def _divide(x: Array, divisor: Array | float) -> Array:
    """x / divisor with IEEE division (see the module docstring): the divisor, broadcast to x, behind a barrier."""
    return x / lax.optimization_barrier(jnp.broadcast_to(jnp.asarray(divisor, jnp.float32), jnp.shape(x)))


def _finish(out: Array, bias: Array | None, dtype: jnp.dtype) -> Array:
    """out (float32) plus bias in float32, cast to x's dtype, as every op of the reference ends."""
    return (out if bias is None else out + bias.astype(jnp.float32)).astype(dtype)


def _scale_and_add(acc: Array, multiplier: Array, bias: Array | None, dtype: jnp.dtype) -> Array:
    """float32(acc) * multiplier, rounded, then plus bias, rounded: MLAS's QGEMM output processor (a multiply, then
    an add; never a fused multiply-add). XLA's CPU backend contracts a multiply feeding an add in one fusion into an
    FMA (measured: 26-28% of the outputs of a biased int8 linear one ulp off ONNX Runtime's and the reference's,
    which moves an activation next to a rounding tie of the next quantized op to the other step), and an
    optimization barrier does not stop it (the CPU compiler drops barriers before fusing). A select on the product
    (`where(p == p, p, p + 1)`: p itself, a NaN included) sits between the multiply and the add, so LLVM cannot
    contract them; the barrier keeps XLA's simplifier from folding the select away."""
    out = acc.astype(jnp.float32) * multiplier
    if bias is not None:
        product = lax.optimization_barrier(out)
        out = jnp.where(product == product, product, product + 1) + bias.astype(jnp.float32)
    return out.astype(dtype)


# ---- weight-only --------------------------------------------------------------------------------------------
def _unpack(packed: Array, bits: int) -> Array:
    """graphs.quant.unpack over the whole last dim: `bits`-bit values, low bits of each byte first."""
    mask = (1 << bits) - 1
    parts = [(packed >> (bits * i)) & mask for i in range(8 // bits)]
    return jnp.stack(parts, axis=-1).reshape(*packed.shape[:-1], -1)


def _dequantize(qweight: Array, scales: Array, zero_points: Array | None, k: int, bits: int) -> Array:
    """W [N, K] float32 from MatMulNBits' layout: (q - zero point) * scale per block, the padding cut off."""
    n, blocks, _ = qweight.shape
    q = _unpack(qweight, bits).astype(jnp.float32)
    zero = (jnp.full((n, blocks), 1 << (bits - 1), jnp.float32) if zero_points is None
            else _unpack(zero_points, bits)[:, :blocks].astype(jnp.float32))
    return ((q - zero[..., None]) * scales[..., None]).reshape(n, -1)[:, :k]


@op(OPS["weight_only_linear"])
def weight_only_linear(x: Array, qweight: Array, scales: Array, zero_points: Array | None, bias: Array | None,
                       k: int, bits: int, block_size: int) -> Array:
    """x [..., K] @ W^T + bias: the weight dequantized to float32, then one dot (why: module docstring)."""
    w = _dequantize(qweight, scales.astype(jnp.float32), zero_points, k, bits)
    out = lax.dot_general(x.astype(jnp.float32), w, (((x.ndim - 1,), (1,)), ((), ())))
    return _finish(out, bias, x.dtype)


@op(OPS["weight_only_embedding"])
def weight_only_embedding(qweight: Array, scales: Array, zero_points: Array | None, indices: Array, k: int,
                          bits: int, block_size: int) -> Array:
    """The rows `indices` of the quantized table, gathered first and then dequantized to float32 [..., K]."""
    flat = indices.reshape(-1)
    zeros = None if zero_points is None else jnp.take(zero_points, flat, axis=0)
    rows = _dequantize(jnp.take(qweight, flat, axis=0), jnp.take(scales, flat, axis=0).astype(jnp.float32),
                       zeros, k, bits)
    return rows.reshape(*indices.shape, k)


# ---- int8 with quantized activations ----------------------------------------------------------------------
def _dynamic_quantize(x: Array) -> tuple[Array, Array, Array]:
    """graphs.quant.dynamic_quantize: x as uint8 values (float32), the scale of its range with 0 in it over 255,
    the zero point round(-min / scale), ties to even (jnp.round)."""
    low, high = jnp.minimum(jnp.min(x), 0.0), jnp.maximum(jnp.max(x), 0.0)
    scale = _divide(high - low, 255.0)
    safe = jnp.where(scale > 0, scale, jnp.float32(1.0))
    zero = jnp.clip(jnp.round(-low / safe), 0, 255)
    return jnp.clip(jnp.round(_divide(x, safe)) + zero, 0, 255), scale, zero


def _integer_matmul(xq: Array, zero: Array | int, qweight: Array) -> Array:
    """(xq - zero) @ qweight, exact in int32: (xq - 128) fits int8, so one int8 x int8 dot plus the zero point's
    share, (128 - zero) * the weight's column sums."""
    low = (xq - 128).astype(jnp.int8)
    dot = lax.dot_general(low, qweight, (((xq.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
    return dot + (128 - jnp.asarray(zero).astype(jnp.int32)) * jnp.sum(qweight, axis=0, dtype=jnp.int32)


@op(OPS["dynamic_quant_linear"])
def dynamic_quant_linear(x: Array, qweight: Array, w_scale: Array, bias: Array | None) -> Array:
    """x quantized per call as DynamicQuantizeLinear, an exact integer matmul, scaled by x_scale * w_scale."""
    xq, scale, zero = _dynamic_quantize(x.astype(jnp.float32))
    return _scale_and_add(_integer_matmul(xq, zero, qweight), scale * w_scale.astype(jnp.float32), bias, x.dtype)


@op(OPS["static_quant_linear"])
def static_quant_linear(x: Array, qweight: Array, w_scale: Array, bias: Array | None, x_scale: float,
                        x_zero_point: int) -> Array:
    """x quantized with its calibrated scale and zero point, an exact integer matmul, scaled by x_scale * w_scale."""
    xq = jnp.clip(jnp.round(_divide(x.astype(jnp.float32), x_scale)) + x_zero_point, 0, 255)
    multiplier = jnp.float32(x_scale) * w_scale.astype(jnp.float32)
    return _scale_and_add(_integer_matmul(xq, x_zero_point, qweight), multiplier, bias, x.dtype)

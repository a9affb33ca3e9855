"""The onnx target's translations of the quantized dialect ops (graphs/quant.py), part of onnx_dialect's table:
each is exported as what ONNX Runtime's CPU EP runs with integer kernels, its weight stored as the graph holds
it (uint8 / int8 initializers, never a float copy).

| dialect op           | exported as                                                | ONNX Runtime runs         |
|----------------------|------------------------------------------------------------|---------------------------|
| weight_only_linear   | com.microsoft MatMulNBits (K, N, bits, block_size; inputs  | the same                  |
|                      | A, B, scales, zero_points if stored, g_idx absent, bias)   |                           |
| weight_only_embedding| com.microsoft GatherBlockQuantized over the same rows, the  | the same                  |
|                      | padding past K sliced off                                  |                           |
| dynamic_quant_linear | com.microsoft DynamicQuantizeMatMul (A, B int8, b_scale,   | the same                  |
|                      | no b_zero_point, bias)                                     |                           |
| static_quant_linear  | QuantizeLinear, DequantizeLinear on x (uint8, the scale    | QuantizeLinear,           |
|                      | and zero point as constants); DequantizeLinear(qweight,    | MatMulIntegerToFloat      |
|                      | w_scale, axis=1); MatMul; Add(bias as [1, .., 1, N], rank  | (com.microsoft), Add      |
|                      | >= 3; the sum of a 1-D or 2-D x squeezed back)             |                           |

The graph's storage is MatMulNBits' own (B [N, n_blocks, blob], scales [N, n_blocks], zero points packed per
row), so the weight is exported as it is. MatMulNBits runs at `accuracy_level` 0 (x in float32, the dialect op's
math); `quant_translations(4)` gives a table at level 4, where the kernel quantizes x to int8 per block, faster
but no longer the op's math (its error is one int8 step of x: max|x| / 254 per element).

Measured (ONNX Runtime 1.32, CPU EP, AVX512-VNNI, 2 intra-op threads without spinning, 2 shared cores busy with
other work, so CPU ms per call, median of >= 41 interleaved calls; the best wall time is about half of it): x [B,
128, 768] @ W [768, 3072] + bias, B = 1 / 8, and one decoded token, x [1, 1, 768].
| form                                                  | B = 1     | B = 8   | one token   |
|-------------------------------------------------------|-----------|---------|-------------|
| float32 MatMul + Add                                  | 6.5       | 50      | 0.71        |
| MatMulNBits 4-bit, block 32, accuracy level 0 / 4     | 6.5 / 5.4 | 51 / 41 | 0.35 / 0.21 |
| MatMulNBits 4-bit, block 128, level 0 / 4             | 6.5 / 4.1 | 50 / 32 | 0.32 / 0.17 |
| MatMulNBits 4-bit, per channel, level 0 / 4           | 6.5 / 3.7 | 50 / 29 | 0.33 / 0.15 |
| MatMulNBits 8-bit, block 32, level 0 / 4              | 17 / 5.0  | 59 / 38 | 9.9 / 0.31  |
| MatMulNBits 8-bit, block 128, level 0 / 4             | 13 / 4.0  | 57 / 30 | 6.4 / 0.29  |
| MatMulNBits 8-bit, per channel, level 0 / 4           | 12 / 3.7  | 55 / 28 | 4.7 / 0.28  |
| DynamicQuantizeMatMul                                 | 2.0       | 14      | 0.29        |
| static QDQ: QuantizeLinear, MatMulIntegerToFloat, Add | 2.1       | 15      | 0.28        |
W [768, 768] and [3072, 768] rank the forms alike. DynamicQuantizeLinear + MatMulInteger + Cast + Mul is what ONNX
Runtime fuses into DynamicQuantizeMatMul itself; left unfused (basic optimization level) it costs 1-23% more. The
bias inside MatMulIntegerToFloat (a contrib node, no longer a QDQ graph) would save 0-10% of the static form.

ONNX Runtime turns the QDQ MatMul into MatMulIntegerToFloat at its extended level, but its basic level first fuses
a MatMul + Add into a float Gemm (MatMulAddFusion: a 2-D x, or any rank with static shapes, and a bias of shape
[N], [1, N] or [M, N]), which leaves the DequantizeLinear nodes in front of it and no integer kernel. A bias
broadcast from [1, 1, N] (rank >= 3) is not one it takes, so the bias goes in at that rank: then ONNX Runtime
runs QuantizeLinear, MatMulIntegerToFloat and the Add, whatever x's rank and however static its shape.

The contrib kernels take float32 only on the CPU: x of another dtype is cast to float32 and the result back, as the
reference computes. Their schemas are declared here (`_contrib`): onnx_dialect's helper knows only float and
int64 inputs, and it imports this module for its table.
"""

from __future__ import annotations

from typing import Any, Callable

import onnx
from onnxscript import ir
from onnxscript import opset18 as op
from onnxscript.onnx_types import TensorType
from onnxscript.values import Op, Opset

from crossgraph.graphs.quant import QUANT_OPS

MICROSOFT = Opset("com.microsoft", 1)

Value = TensorType
"""A tensor (an onnx_ir Value while the exporter traces); onnxscript's TensorType reads as any dtype."""

_A = onnx.defs.OpSchema.AttrType


def _contrib(name: str, inputs: dict[str, str], attributes: dict[str, onnx.defs.OpSchema.AttrType]) -> Op:
    """A com.microsoft op with one float32 output, callable while the exporter traces: `inputs` maps each input
    (a trailing '?': optional) to its element type ("float", "uint8", ...). The tracer needs a schema and the onnx
    package has none for contrib ops."""
    schema = onnx.defs.OpSchema
    def formal(spec: str, dtype: str) -> onnx.defs.OpSchema.FormalParameter:
        option = schema.FormalParameterOption.Optional if spec.endswith("?") else schema.FormalParameterOption.Single
        return schema.FormalParameter(spec.rstrip("?"), f"tensor({dtype})", param_option=option)
    built = schema(name, MICROSOFT.domain, MICROSOFT.version, inputs=[formal(*i) for i in inputs.items()],
                   outputs=[formal("Y", "float")], type_constraints=[],
                   attributes=[schema.Attribute(a, kind, "", required=False) for a, kind in attributes.items()])
    return Op(MICROSOFT, name, built)


MatMulNBits = _contrib(
    "MatMulNBits", {"A": "float", "B": "uint8", "scales": "float", "zero_points?": "uint8", "g_idx?": "int32",
                    "bias?": "float"},
    {"K": _A.INT, "N": _A.INT, "bits": _A.INT, "block_size": _A.INT, "accuracy_level": _A.INT})
GatherBlockQuantized = _contrib(
    "GatherBlockQuantized", {"data": "uint8", "indices": "int64", "scales": "float", "zero_points?": "uint8"},
    {"gather_axis": _A.INT, "quantize_axis": _A.INT, "block_size": _A.INT, "bits": _A.INT})
DynamicQuantizeMatMul = _contrib(
    "DynamicQuantizeMatMul", {"A": "float", "B": "int8", "b_scale": "float", "b_zero_point?": "int8",
                              "bias?": "float"}, {})


def _float32(x: Value | None) -> Value | None:
    """x as float32 (None stays None): what the contrib kernels take and the reference computes in."""
    return x if x is None or x.dtype == ir.DataType.FLOAT else op.Cast(x, to=onnx.TensorProto.FLOAT)


def _like(out: Value, x: Value) -> Value:
    """The float32 result in x's dtype, as the reference's `.to(x.dtype)`."""
    return out if x.dtype == ir.DataType.FLOAT else op.CastLike(out, x)


def weight_only_linear_at(accuracy_level: int) -> Callable[..., Value]:
    """crossgraph.weight_only_linear's translation with MatMulNBits' `accuracy_level`: 0 computes in float32, the
    dialect op's math; 4 quantizes x to int8 per block, faster but not the op's math (module docstring)."""
    def weight_only_linear(x: Value, qweight: Value, scales: Value, zero_points: Value | None, bias: Value | None,
                           k: int, bits: int, block_size: int) -> Value:
        """One MatMulNBits: the dialect stores its layout, so the weight goes as it is."""
        out = MatMulNBits(_float32(x), qweight, scales, zero_points, None, _float32(bias), K=k, N=qweight.shape[0],
                          bits=bits, block_size=block_size, accuracy_level=accuracy_level)
        return _like(out, x)
    return weight_only_linear


def weight_only_embedding(qweight: Value, scales: Value, zero_points: Value | None, indices: Value, k: int,
                          bits: int, block_size: int) -> Value:
    """crossgraph.weight_only_embedding as one GatherBlockQuantized over the table's rows ([V, blocks * bytes],
    the same bytes MatMulNBits reads), its padding past K sliced off. The kernel wants 4-bit zero points of an
    even number of blocks (two per byte): an odd count gets one more block (scale 1, padding's zero point 0,
    which the packing already holds), made once when ONNX Runtime folds constants."""
    blocks = qweight.shape[1]
    data = op.Reshape(qweight, op.Constant(value_ints=[0, -1]))
    if bits == 4 and zero_points is not None and blocks % 2:
        data = op.Pad(data, op.Constant(value_ints=[0, 0, 0, qweight.shape[2]]))
        scales = op.Pad(scales, op.Constant(value_ints=[0, 0, 0, 1]), op.Constant(value_float=1.0))
        blocks += 1
    out = GatherBlockQuantized(data, indices, scales, zero_points, gather_axis=0, quantize_axis=1,
                               block_size=block_size, bits=bits)
    if blocks * block_size == k:
        return out
    return op.Slice(out, op.Constant(value_ints=[0]), op.Constant(value_ints=[k]), op.Constant(value_ints=[-1]))


def dynamic_quant_linear(x: Value, qweight: Value, w_scale: Value, bias: Value | None) -> Value:
    """crossgraph.dynamic_quant_linear as one DynamicQuantizeMatMul (symmetric weight: no zero point)."""
    return _like(DynamicQuantizeMatMul(_float32(x), qweight, w_scale, None, _float32(bias)), x)


def static_quant_linear(x: Value, qweight: Value, w_scale: Value, bias: Value | None, x_scale: float,
                        x_zero_point: int) -> Value:
    """crossgraph.static_quant_linear as a QDQ MatMul, which ONNX Runtime runs as QuantizeLinear +
    MatMulIntegerToFloat; the bias is added at rank >= 3 so that no float Gemm takes it (module docstring)."""
    h = _float32(x)
    scale = op.Constant(value=ir.tensor(x_scale, dtype=ir.DataType.FLOAT))
    zero_point = op.Constant(value=ir.tensor(x_zero_point, dtype=ir.DataType.UINT8))
    h = op.DequantizeLinear(op.QuantizeLinear(h, scale, zero_point), scale, zero_point)
    out = op.MatMul(h, op.DequantizeLinear(qweight, w_scale, axis=1))
    if bias is not None:
        rank, lifted = len(x.shape), max(0, 3 - len(x.shape))
        out = op.Add(out, op.Reshape(_float32(bias), op.Constant(value_ints=[1] * (rank + lifted - 1) + [-1])))
        if lifted:  # the sum came out with `lifted` leading 1s
            out = op.Squeeze(out, op.Constant(value_ints=list(range(lifted))))
    return _like(out, x)


def quant_translations(accuracy_level: int = 0) -> dict[Any, Callable[..., Any]]:
    """The quantized dialect ops' entries of onnx_dialect.TRANSLATIONS, MatMulNBits at `accuracy_level`."""
    return {
        QUANT_OPS["weight_only_linear"]: weight_only_linear_at(accuracy_level),
        QUANT_OPS["weight_only_embedding"]: weight_only_embedding,
        QUANT_OPS["dynamic_quant_linear"]: dynamic_quant_linear,
        QUANT_OPS["static_quant_linear"]: static_quant_linear,
    }


QUANT_TRANSLATIONS = quant_translations()
"""The entries onnx_dialect.TRANSLATIONS holds: MatMulNBits at accuracy level 0, the dialect op's float math."""

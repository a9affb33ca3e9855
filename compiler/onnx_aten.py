"""The onnx target's translations of ATen ops whose stock torch.onnx (onnxscript) translation is missing or is not
torch's math, part of onnx_dialect's table (torch.onnx's `custom_translation_table` takes them before its own).

| ATen op   | the stock translation                                | here                                           |
|-----------|------------------------------------------------------|------------------------------------------------|
| histc     | bins by comparison with edges computed in float64,  | torch's CPU math: bin = trunc((x - min) * bins |
|           | so an element near an edge can land one bin off;     | / (max - min)) in x's dtype, the last bin      |
|           | min == max (range from the data, histc's default)    | closed; min == max takes x's range (widened by |
|           | raises NotImplementedError (an internal error)       | 1 each way when empty); ScatterElements(add)   |
| bincount  | weights raise NotImplementedError                     | ScatterElements(add) of the weights (or ones)  |
|           |                                                      | into max(max(x) + 1, minlength) zeros          |
| masked_   | none                                                 | Compress of x and the mask, both broadcast     |
| select    |                                                      | (a data-dependent length, which ONNX has)      |
| empty_    | none (what torch.empty_like becomes in core ATen;    | zeros of the size (Expand), as the stock       |
| permuted  | transformers' MoE unsorts tokens into one)           | aten.empty; the physical layout is moot here   |

MoE routing counts tokens per expert with either (Hugging Face transformers: histc over the sorted expert ids).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from onnxscript import ir
from onnxscript import opset18 as op
from onnxscript.function_libs.torch_lib.ops.common import merge_dims
from onnxscript.onnx_types import TensorType

Value = TensorType
aten = torch.ops.aten

_HALF = (ir.DataType.FLOAT16, ir.DataType.BFLOAT16)


def _scalar(value: float, dtype: ir.DataType) -> Value:
    return op.Constant(value=ir.tensor(value, dtype=dtype))


def _rounded(value: Value, dtype: ir.DataType) -> Value:
    """A float32 step rounded to float16 / bfloat16 and back, as torch's CPU kernel rounds each half step."""
    return value if dtype not in _HALF else op.Cast(op.Cast(value, to=dtype), to=ir.DataType.FLOAT)


def histc(x: Value, bins: int = 100, min: float = 0.0, max: float = 0.0) -> Value:  # noqa: A002  (schema names)
    """aten.histc as torch's CPU kernel computes it (see the module docstring); counts accumulate in float32 for
    float16 and bfloat16 and are returned in x's dtype. Integer x counts as float32 (torch's CPU kernel refuses
    it)."""
    out = x.dtype if x.dtype in (ir.DataType.FLOAT, ir.DataType.DOUBLE, *_HALF) else ir.DataType.FLOAT
    dtype = ir.DataType.FLOAT if out in _HALF else out  # ONNX Runtime's CPU arithmetic: float32 and float64
    flat = op.Reshape(x if dtype == x.dtype else op.Cast(x, to=dtype), op.Constant(value_ints=[-1]))
    if min == max:
        lo, hi = op.ReduceMin(flat, keepdims=0), op.ReduceMax(flat, keepdims=0)
        empty = op.Equal(lo, hi)
        one = _scalar(1.0, dtype)
        lo = op.Where(empty, _rounded(op.Sub(lo, one), out), lo)
        hi = op.Where(empty, _rounded(op.Add(hi, one), out), hi)
    else:
        lo, hi = (_rounded(_scalar(v, dtype), out) for v in (min, max))
    inside = op.And(op.GreaterOrEqual(flat, lo), op.LessOrEqual(flat, hi))  # NaN is neither
    step = _rounded(op.Mul(_rounded(op.Sub(flat, lo), out), _rounded(_scalar(float(bins), dtype), out)), out)
    scaled = _rounded(op.Div(step, _rounded(op.Sub(hi, lo), out)), out)
    # outside elements (NaN, inf included) are scattered as zeros into bin 0, so no cast sees them
    pos = op.Cast(op.Floor(op.Where(inside, scaled, _scalar(0.0, dtype))), to=ir.DataType.INT64)
    pos = op.Min(pos, op.Constant(value=ir.tensor(bins - 1, dtype=ir.DataType.INT64)))
    ones = op.Cast(inside, to=dtype)
    zeros = op.Expand(_scalar(0.0, dtype), op.Constant(value_ints=[bins]))
    counts = op.ScatterElements(zeros, pos, ones, axis=0, reduction="add")
    return counts if out == dtype else op.Cast(counts, to=out)


def bincount(x: Value, weights: Value | None = None, minlength: int = 0) -> Value:
    """aten.bincount: how often each value 0..max(x) occurs in the 1-d non-negative x (or the sum of its weights),
    at least `minlength` long; int64 without weights, float32 or float64 with them, as torch gives (float64 for
    weights of any dtype but float32)."""
    index = op.Cast(x, to=ir.DataType.INT64)
    # a -1 appended keeps ReduceMax defined on an empty x: its length is then 0 (or minlength)
    top = op.ReduceMax(op.Concat(index, op.Constant(value_ints=[-1]), axis=0), keepdims=1)
    length = op.Max(op.Add(top, op.Constant(value_ints=[1])), op.Constant(value_ints=[minlength]))
    if weights is None:
        dtype, updates = ir.DataType.INT64, op.Expand(op.Constant(value_int=1), op.Shape(index))
    else:
        dtype = ir.DataType.FLOAT if weights.dtype == ir.DataType.FLOAT else ir.DataType.DOUBLE
        updates = weights if weights.dtype == dtype else op.Cast(weights, to=dtype)
    zeros = op.Expand(op.Constant(value=ir.tensor(0, dtype=dtype)), length)
    return op.ScatterElements(zeros, index, updates, axis=0, reduction="add")


def masked_select(x: Value, mask: Value) -> Value:
    """aten.masked_select: the elements of x where the mask (broadcast with x) is true, flattened in order."""
    mask = op.Cast(mask, to=ir.DataType.BOOL)
    wide = op.Where(mask, x, x)  # x broadcast to the common shape
    return op.Compress(wide, op.Expand(mask, op.Shape(wide)))


def empty_permuted(size: Sequence[Any], physical_layout: Sequence[int], dtype: int = ir.DataType.FLOAT,
                   layout: str = "", device: str = "", pin_memory: bool = False) -> Value:
    """aten.empty_permuted: an uninitialized tensor of `size` (strides are no ONNX concept), as zeros."""
    dtype = ir.DataType.FLOAT if dtype in (-1, None) else ir.DataType(dtype)
    return op.Expand(op.Constant(value=ir.tensor(0, dtype=dtype)), merge_dims(list(size)))


ATEN_TRANSLATIONS: dict[Any, Callable[..., Any]] = {
    aten.histc.default: histc,
    aten.bincount.default: bincount,
    aten.masked_select.default: masked_select,
    aten.empty_permuted.default: empty_permuted,
}
"""Part of torch.onnx's custom_translation_table (see onnx_dialect.TRANSLATIONS): one entry per ATen op."""

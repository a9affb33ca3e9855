"""The onnx target's table for the crossgraph dialect: onnxscript functions torch.onnx's exporter traces in place
of each dialect op (its `custom_translation_table`), choosing per op what ONNX Runtime's CPU EP runs fastest.

| dialect op     | exported as                                                      | ONNX Runtime runs             |
|----------------|------------------------------------------------------------------|-------------------------------|
| attention      | com.microsoft MultiHeadAttention on the tensors before a head     | its MHA kernel (flash when    |
|                | split (float32, H == Hkv); `unidirectional` when Sq == Sk, else   | no mask/causal)               |
|                | the end-aligned causal mask folded into `attention_bias`          |                               |
|                | else MatMul, Softmax, MatMul (GQA: kv heads repeated)             | FusedMatMul, Softmax, MatMul  |
|                | + with a mask, or causal with Sq > Sk: rows left no key zeroed    | the same                      |
|                | (ReduceMax, Equal, Where on the mask; a Mul of the output)        |                               |
| add_layer_norm | Add, LayerNormalization                                          | the same                      |
| bias_gelu      | com.microsoft FastGelu (tanh) / BiasGelu (erf), bias fused if 1D  | the same                      |
| rms_norm       | Pow, ReduceMean, Add, Sqrt, Div, Mul                             | SimplifiedLayerNormalization  |
| rotary_        | com.microsoft RotaryEmbedding (float32, x [B, H, S, D], angles    | its RotaryEmbedding kernel    |
| embedding      | per position or per token), else Split, Neg, Concat, Mul, Add     | the same                      |
| quantized      | MatMulNBits, DynamicQuantizeMatMul, a QDQ MatMul: see onnx_quant  | integer kernels               |
| linears        |                                                                  |                               |

Measured (ONNX Runtime 1.32, CPU EP, 2 intra-op threads, 2 shared busy cores; best of >= 290 calls, ms;
differences under about 10% are noise): contrib op vs the standard form.
- attention, GPT-2 small (H 12, S 128, D 64) after its head split, batch 1 / 8: causal 0.39 / 4.8 vs 0.41 / 4.3,
  non-causal 0.65 / 3.3 vs 0.68 / 3.6: a draw, so the one fused node is kept. On [B, H, S, D] inputs that are not
  a head split, MultiHeadAttention's [B, S, H*D] layout costs transposes in and out: 0.41 / 4.0 vs 0.30 / 2.7
  (causal), 0.69 / 3.6 vs 0.29 / 2.6. GQA (12 / 4 heads), causal: 0.40 / 3.8 vs 0.38 / 3.1. Both use the standard
  form. (The standard form is what torch.onnx makes of scaled_dot_product_attention, within 1%.)
  Zeroing the rows a mask leaves no key (the dialect's, torch's) with a [B, 1, 1, S] key padding mask, batch
  1 / 8 (best of 12 x 60 calls, interleaved): 0.384 / 3.59 vs 0.375 / 3.35 without, causal too 0.404 / 4.04 vs
  0.380 / 3.81: +2 to 7%, the Mul a pass over the output (a Where there, 2.5x slower in ONNX Runtime, cost +6 to
  17%); in GPT-2's attention sublayer (with its projections) within noise. Causal-only and unmasked: unchanged.
- add_layer_norm [B, 128, 768]: SkipLayerNormalization 0.25 / 1.95 vs Add + LayerNormalization 0.045 / 0.30; its
  CPU kernel is a scalar per-row loop (one-pass variance), LayerNormalization's is vectorized.
- rms_norm [B, 128, 768]: SkipSimplifiedLayerNormalization (zero skip) 0.068 / 0.65 vs this pattern, which ONNX
  Runtime's optimizer fuses into its SimplifiedLayerNormalization kernel, 0.016 / 0.13. (SimplifiedLayerNormalization
  itself is registered in the default domain, where onnx.checker rejects it.)
- bias_gelu [B, 128, 3072]: FastGelu 0.119 / 1.06 vs Add + Gelu 0.119 / 1.06: ONNX Runtime fuses Add + Gelu into
  the same kernel; emitting it directly does not depend on that pattern match or on opset 20's Gelu.
- rotary_embedding, Llama-small-like q (H 12, S 128, D 64), batch 1 / 8: RotaryEmbedding 0.035 / 0.13 vs the
  captured form (Mul, Split, Neg, Concat, Mul, Add on full-width cos/sin) 0.085 / 0.61 with cos/sin [S, D] (our
  Llama); with Hugging Face's per-token [B, 1, S, D] angles (the cache flattened to one row per token, positions
  0..B*S-1) 0.037 / 0.21 vs 0.084 / 0.62. ONNX Runtime does not fuse the standard form itself.
Contrib kernels take float32 only on the CPU; other dtypes get the standard form. The onnx package has no schemas
for contrib ops, so each is given one here (`_contrib`) for the exporter's tracer.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import onnx
from onnxscript import ir
from onnxscript import opset18 as op
from onnxscript.onnx_types import TensorType
from onnxscript.values import Op, Opset

from crossgraph.compiler.onnx_aten import ATEN_TRANSLATIONS
from crossgraph.compiler.onnx_quant import QUANT_TRANSLATIONS
from crossgraph.graphs.dialect import OPS

MICROSOFT = Opset("com.microsoft", 1)
_FLOATS = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(double)"]

Value = TensorType
"""A tensor (an onnx_ir Value while the exporter traces); annotated as onnxscript's TensorType, which the exporter
reads as an input of any dtype."""


def _contrib(name: str, inputs: Sequence[str], attributes: dict[str, onnx.defs.OpSchema.AttrType]) -> Op:
    """A one-output com.microsoft op callable while the exporter traces; a trailing '?' marks an optional input,
    a leading '#' an int64 one (positions), the others are float. The onnx package has no schemas for contrib
    ops, and the tracer needs one, so it is written here."""
    schema = onnx.defs.OpSchema
    def formal(spec: str) -> onnx.defs.OpSchema.FormalParameter:
        option = schema.FormalParameterOption.Optional if spec.endswith("?") else schema.FormalParameterOption.Single
        return schema.FormalParameter(spec.strip("#?"), "M" if spec.startswith("#") else "T", param_option=option)
    types = [("T", _FLOATS, "float tensors")]
    if any(s.startswith("#") for s in inputs):
        types.append(("M", ["tensor(int64)"], "int64 tensors"))
    built = schema(name, MICROSOFT.domain, MICROSOFT.version, inputs=[formal(s) for s in inputs],
                   outputs=[formal("output")], type_constraints=types,
                   attributes=[schema.Attribute(a, kind, "", required=False) for a, kind in attributes.items()])
    return Op(MICROSOFT, name, built)


_A = onnx.defs.OpSchema.AttrType
MultiHeadAttention = _contrib(
    "MultiHeadAttention", ["query", "key?", "value?", "bias?", "key_padding_mask?", "attention_bias?"],
    {"num_heads": _A.INT, "scale": _A.FLOAT, "unidirectional": _A.INT, "mask_filter_value": _A.FLOAT})
FastGelu = _contrib("FastGelu", ["X", "bias?"], {})
BiasGelu = _contrib("BiasGelu", ["A", "B"], {})
Gelu = _contrib("Gelu", ["X"], {})
RotaryEmbedding = _contrib("RotaryEmbedding", ["input", "#position_ids", "cos_cache", "sin_cache"],
                           {"interleaved": _A.INT})


# ---- helpers ----------------------------------------------------------------------------------------------------
def _is_float32(*values: Value) -> bool:
    return all(v is None or v.dtype == ir.DataType.FLOAT for v in values)


def _same_dim(a: Any, b: Any) -> bool:
    """True when two dims are known equal: equal ints, or the same named symbol."""
    if isinstance(a, int) or isinstance(b, int):
        return a == b
    return a.value is not None and a == b


def _constant(value: float, like: Value | ir.DataType) -> Value:
    """A scalar constant in `like`'s dtype (or in `like`, a dtype), exact in it (not a float32 constant cast to
    it). A value an op made while the exporter traces has no dtype yet: pass the dtype itself for those."""
    return op.Constant(value=ir.tensor(value, dtype=like if isinstance(like, ir.DataType) else like.dtype))


def _promoted_dtype(*dtypes: ir.DataType) -> ir.DataType:
    """The float dtype torch promotes `dtypes` to: the widest, and float32 for float16 with bfloat16."""
    if len(set(dtypes)) == 1:
        return dtypes[0]
    wide = max(dtypes, key=lambda d: d.itemsize)
    return ir.DataType.FLOAT if wide.itemsize == 2 else wide


def _promoted(*values: Value) -> list[Value]:
    """The float values cast to their promoted dtype: ONNX's elementwise ops take one dtype."""
    dtype = _promoted_dtype(*(v.dtype for v in values))
    return [v if v.dtype == dtype else op.Cast(v, to=dtype) for v in values]


def _scalar_dim(x: Value, axis: int) -> Value:
    """x.shape[axis] as an int64 scalar."""
    return op.Squeeze(op.Shape(x, start=axis, end=axis + 1), [0])


# ---- attention --------------------------------------------------------------------------------------------------
def _head_split_source(x: Value) -> Value | None:
    """The [B, S, H, D] tensor that `x` transposes with perm [0, 2, 1, 3] (a model's head split), or None."""
    node = x.producer()
    if node is None or node.domain not in ("", "ai.onnx") or node.op_type != "Transpose":
        return None
    perm = node.attributes.get("perm")
    return node.inputs[0] if perm is not None and tuple(perm.as_ints()) == (0, 2, 1, 3) else None


def _repeat_heads(x: Value, groups: Value) -> Value:
    """[B, Hkv, S, D] -> [B, Hkv * groups, S, D], each head repeated `groups` (a 1-element int64) times in place,
    as repeat_interleave."""
    lead, rest = op.Shape(x, start=0, end=2), op.Shape(x, start=2)
    expanded = op.Expand(op.Unsqueeze(x, [2]), op.Concat(lead, groups, rest, axis=0))
    return op.Reshape(expanded, op.Concat(op.Shape(x, start=0, end=1), op.Constant(value_ints=[-1]), rest, axis=0))


def _causal_keep(q: Value, k: Value) -> Value:
    """[Sq, Sk] bool, True where key j <= query i + (Sk - Sq): the causal mask aligned to the end."""
    sq, sk = _scalar_dim(q, 2), _scalar_dim(k, 2)
    rows = op.Unsqueeze(op.Range(op.Constant(value_int=0), sq, op.Constant(value_int=1)), [1])
    cols = op.Unsqueeze(op.Range(op.Constant(value_int=0), sk, op.Constant(value_int=1)), [0])
    return op.LessOrEqual(op.Sub(cols, rows), op.Sub(sk, sq))


def _additive_mask(q: Value, mask: Value | None, keep: Value | None) -> Value | None:
    """The bool or float mask and the causal `keep` as one additive float mask, -inf where a key is hidden (None
    when there is none)."""
    hidden = _constant(float("-inf"), q)
    zero = _constant(0.0, q)
    if mask is not None and mask.dtype == ir.DataType.BOOL:
        return op.Where(mask if keep is None else op.And(mask, keep), zero, hidden)
    if mask is not None:
        mask = op.CastLike(mask, q)
        return mask if keep is None else op.Where(keep, mask, hidden)
    return None if keep is None else op.Where(keep, zero, hidden)


def _without_dead_rows(bias: Value, rank: int) -> tuple[Value, Value]:
    """(`bias`, a rank-`rank` additive mask, with 0 for the query rows it gives -inf at every key, live): live is
    [B or 1, H or 1, Sq or 1, 1], 1 where a row keeps a key and 0 where it keeps none. Softmax and
    MultiHeadAttention give NaN for a row of -inf; with the 0 it is finite, and a Mul by live makes it the
    dialect's zeros (a Mul broadcasts faster than a Where in ONNX Runtime, and NaN inputs still give NaN)."""
    dead = op.Equal(op.ReduceMax(bias, op.Constant(value_ints=[-1]), keepdims=1), _constant(float("-inf"), bias))
    live = op.CastLike(op.Not(dead), bias)
    if rank < 4:
        live = op.Unsqueeze(live, list(range(4 - rank)))
    return op.Where(dead, _constant(0.0, bias), bias), live


def _attention_bias(bias: Value, rank: int, q: Value, k: Value) -> Value:
    """A rank-`rank` additive mask broadcastable to [B, H, Sq, Sk] as MultiHeadAttention's [B or 1, H or 1, Sq,
    Sk]."""
    if rank < 4:
        bias = op.Unsqueeze(bias, list(range(4 - rank)))
    target = op.Concat(op.Shape(bias, start=0, end=2), op.Shape(q, start=2, end=3), op.Shape(k, start=2, end=3),
                       axis=0)
    return op.Expand(bias, target)


def _may_hide_a_row(causal: bool, q: Value, k: Value) -> bool:
    """Whether the causal mask may leave a query no key: Sq > Sk, or lengths not known to be in order."""
    sq, sk = q.shape[2], k.shape[2]
    return causal and not (_same_dim(sq, sk) or (isinstance(sq, int) and isinstance(sk, int) and sq < sk))


def _groups(q: Value, k: Value) -> Value:
    """Query heads per key/value head, as a 1-element int64."""
    heads, kv_heads = q.shape[1], k.shape[1]
    if isinstance(heads, int) and isinstance(kv_heads, int):
        return op.Constant(value_ints=[heads // kv_heads])
    return op.Div(op.Shape(q, start=1, end=2), op.Shape(k, start=1, end=2))


def attention(q: Value, k: Value, v: Value, mask: Value | None = None, causal: bool = False,
              scale: float = 1.0) -> Value:
    """crossgraph.attention: MultiHeadAttention on the tensors before the model's head split when q, k and v are
    float32 head splits with one static head count; else MatMul, Softmax, MatMul (see the module docstring)."""
    heads = q.shape[1]
    q_split, k_split, v_split = (_head_split_source(t) for t in (q, k, v))
    fused = (isinstance(heads, int) and heads == k.shape[1] and _is_float32(q, k, v)
             and None not in (q_split, k_split, v_split))
    unidirectional = fused and causal and mask is None and _same_dim(q.shape[2], k.shape[2])
    keep = _causal_keep(q, k) if causal and not unidirectional else None
    bias = _additive_mask(q, mask, keep)
    rank = max(0 if mask is None else len(mask.shape), 0 if keep is None else 2)
    live = None
    if mask is not None or _may_hide_a_row(causal, q, k):
        bias, live = _without_dead_rows(bias, rank)
    if not fused:
        if not _same_dim(heads, k.shape[1]):
            k, v = _repeat_heads(k, _groups(q, k)), _repeat_heads(v, _groups(q, k))
        scores = op.Mul(op.MatMul(q, op.Transpose(k, perm=[0, 1, 3, 2])), _constant(scale, q))
        out = op.MatMul(op.Softmax(scores if bias is None else op.Add(scores, bias), axis=-1), v)
        return out if live is None else op.Mul(out, live)
    flat = op.Constant(value_ints=[0, 0, -1])
    out = MultiHeadAttention(op.Reshape(q_split, flat), op.Reshape(k_split, flat), op.Reshape(v_split, flat), None,
                             None, None if bias is None else _attention_bias(bias, rank, q, k), num_heads=heads,
                             scale=scale, unidirectional=int(unidirectional))
    out = op.Reshape(out, op.Constant(value_ints=[0, 0, heads, -1]))  # [B, Sq, H, D]
    if live is not None:  # before the transpose, where a row's live factor spans H * D contiguous values
        out = op.Mul(out, op.Transpose(live, perm=[0, 2, 1, 3]))
    return op.Transpose(out, perm=[0, 2, 1, 3])


# ---- norms and gelu ---------------------------------------------------------------------------------------------
def add_layer_norm(x: Value, residual: Value, weight: Value, bias: Value | None = None,
                   eps: float = 1e-5) -> tuple[Value, Value]:
    """crossgraph.add_layer_norm as Add + LayerNormalization: ONNX Runtime's CPU LayerNormalization kernel is
    vectorized, its SkipLayerNormalization a scalar loop, 4-7x slower here (see the module docstring)."""
    x, residual = _promoted(x, residual)
    total = op.Add(x, residual)
    weight, bias = (None if t is None else op.CastLike(t, x) for t in (weight, bias))
    normed, _, _ = op.LayerNormalization(total, weight, bias, axis=-1, epsilon=eps)
    return normed, total


def bias_gelu(x: Value, bias: Value, approximate: str = "none") -> Value:
    """crossgraph.bias_gelu: FastGelu (tanh) or BiasGelu (erf) for float32, the bias fused when it is the 1D
    per-channel bias the kernels take."""
    if not _is_float32(x, bias):
        return _gelu_standard(op.Add(*_promoted(x, bias)), approximate, _promoted_dtype(x.dtype, bias.dtype))
    fused = len(bias.shape) == 1 and len(x.shape) >= 1 and _same_dim(bias.shape[0], x.shape[-1])
    if approximate == "tanh":
        return FastGelu(x, bias) if fused else FastGelu(op.Add(x, bias))
    return BiasGelu(x, bias) if fused else Gelu(op.Add(x, bias))


def _gelu_standard(x: Value, approximate: str, dtype: ir.DataType) -> Value:
    """torch's gelu formulas in standard ONNX, on x of `dtype`."""
    half = _constant(0.5, dtype)
    one = _constant(1.0, dtype)
    if approximate == "tanh":
        inner = _constant(math.sqrt(2 / math.pi), dtype)
        cubic = _constant(0.044715, dtype)
        arg = op.Mul(inner, op.Add(x, op.Mul(cubic, op.Mul(x, op.Mul(x, x)))))
        return op.Mul(op.Mul(half, x), op.Add(one, op.Tanh(arg)))
    root_half = _constant(1 / math.sqrt(2), dtype)
    return op.Mul(op.Mul(half, x), op.Add(one, op.Erf(op.Mul(x, root_half))))


def rms_norm(x: Value, weight: Value, eps: float = 1e-6) -> Value:
    """crossgraph.rms_norm as x / Sqrt(ReduceMean(Pow(x, 2)) + eps) * weight (in float32, cast back before the
    weight): the pattern ONNX Runtime's own optimizer fuses into its SimplifiedLayerNormalization kernel."""
    h = x if _is_float32(x) else op.Cast(x, to=onnx.TensorProto.FLOAT)
    mean_square = op.ReduceMean(op.Pow(h, op.Constant(value_float=2.0)), op.Constant(value_ints=[-1]), keepdims=1)
    h = op.Div(h, op.Sqrt(op.Add(mean_square, op.Constant(value_float=eps))))
    normed = h if _is_float32(x) else op.CastLike(h, x)  # the reference's h.to(x.dtype)
    if x.dtype == weight.dtype:
        return op.Mul(normed, weight)
    dtype = _promoted_dtype(x.dtype, weight.dtype)
    return op.Mul(op.Cast(normed, to=dtype), op.Cast(weight, to=dtype))


# ---- rotary embedding -------------------------------------------------------------------------------------------
def _rotary_rows(x: Value, angles: Value) -> str | None:
    """How RotaryEmbedding can read the angles of x [B, H, S, D]: "positions" when they are [S, D/2] up to
    leading 1s (the cache as it is, positions 0..S-1), "tokens" when they are [B or 1, 1, S or 1, D/2] (one cache
    row per token); None when they vary per head or would broadcast x to a larger shape."""
    if len(x.shape) != 4 or len(angles.shape) > 4:
        return None
    dims = (1,) * (4 - len(angles.shape)) + tuple(angles.shape)
    if dims[1] != 1 or not all(d == 1 or _same_dim(d, x.shape[i]) for i, d in ((0, dims[0]), (2, dims[2]))):
        return None
    return "positions" if dims[0] == 1 and _same_dim(dims[2], x.shape[2]) else "tokens"


def _cache(angles: Value) -> Value:
    """The angles as RotaryEmbedding's cache, one row of D/2 per position: [-1, D/2]."""
    return op.Reshape(angles, op.Concat(op.Constant(value_ints=[-1]), op.Shape(angles, start=-1), axis=0))


def _per_token(x: Value, angles: Value) -> Value:
    """The angles broadcast to [B, 1, S, D/2] (x's batch and length)."""
    rank = len(angles.shape)
    angles = angles if rank == 4 else op.Unsqueeze(angles, list(range(4 - rank)))
    target = op.Concat(op.Shape(x, start=0, end=1), op.Constant(value_ints=[1]), op.Shape(x, start=2, end=3),
                       op.Shape(angles, start=3), axis=0)
    return op.Expand(angles, target)


def rotary_embedding(x: Value, cos: Value, sin: Value) -> Value:
    """crossgraph.rotary_embedding: com.microsoft RotaryEmbedding (not interleaved) for float32 x [B, H, S, D]
    whose angles are per position or per token (see `_rotary_rows`), else the reference's standard ops."""
    rows = _rotary_rows(x, cos) if _is_float32(x, cos, sin) else None
    if rows == "positions" and _rotary_rows(x, sin) == rows:
        return RotaryEmbedding(x, op.Constant(value_ints=[0]), _cache(cos), _cache(sin), interleaved=0)
    if rows == "tokens" and _rotary_rows(x, sin) == rows:
        tokens = op.Concat(op.Shape(x, start=0, end=1), op.Shape(x, start=2, end=3), axis=0)
        positions = op.Reshape(op.Range(op.Constant(value_int=0), op.ReduceProd(tokens, keepdims=0),
                                        op.Constant(value_int=1)), tokens)
        return RotaryEmbedding(x, positions, _cache(_per_token(x, cos)), _cache(_per_token(x, sin)), interleaved=0)
    x, cos, sin = _promoted(x, cos, sin)
    cos, sin = op.Concat(cos, cos, axis=-1), op.Concat(sin, sin, axis=-1)
    x1, x2 = op.Split(x, axis=-1, num_outputs=2)
    return op.Add(op.Mul(x, cos), op.Mul(op.Concat(op.Neg(x2), x1, axis=-1), sin))


TRANSLATIONS: dict[Any, Callable[..., Any]] = {
    OPS["attention"]: attention,
    OPS["add_layer_norm"]: add_layer_norm,
    OPS["bias_gelu"]: bias_gelu,
    OPS["rms_norm"]: rms_norm,
    OPS["rotary_embedding"]: rotary_embedding,
    **QUANT_TRANSLATIONS,
    **ATEN_TRANSLATIONS,
}
"""torch.onnx's custom_translation_table: one entry per dialect op, and the ATen ops of onnx_aten."""

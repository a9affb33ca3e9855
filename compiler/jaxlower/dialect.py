"""The crossgraph dialect (graphs/dialect.py): fused attention on `jax.nn.dot_product_attention`, the norms,
bias_gelu and rotary_embedding in jax.numpy with the reference's precision (statistics in float32 for
low-precision inputs); XLA fuses the elementwise ones itself.
"""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp
from jax import lax

from crossgraph.compiler.jaxlower.dtypes import opmath
from crossgraph.compiler.jaxlower.nn import gelu, native_layer_norm
from crossgraph.compiler.jaxlower.registry import op
from crossgraph.compiler.jaxlower.symbolic import Size, is_static
from crossgraph.graphs.dialect import OPS

Array = jax.Array


def _to_bnts(mask: Array, sq: Size, sk: Size) -> Array:
    """A mask broadcastable to [B, H, Sq, Sk] as the 4D [B or 1, H or 1, Sq, Sk] dot_product_attention takes."""
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    return jnp.broadcast_to(mask, (*mask.shape[:2], sq, sk))


def _causal_keep(sq: Size, sk: Size) -> Array:
    """[1, 1, Sq, Sk], True where key j <= query i + (Sk - Sq): the causal mask aligned to the end."""
    rows = lax.broadcasted_iota(jnp.int32, (sq, sk), 0)
    cols = lax.broadcasted_iota(jnp.int32, (sq, sk), 1)
    return (cols - rows <= jnp.asarray(sk - sq, jnp.int32))[None, None]


@op(OPS["attention"])
def attention(q: Array, k: Array, v: Array, mask: Array | None, causal: bool, scale: float) -> Array:
    """softmax(q k^T * scale [masked]) v on [B, H, S, D] arrays through jax.nn.dot_product_attention, which takes
    [B, S, H, D] and does grouped-query attention itself; its `is_causal` aligns to the start, so it is used only
    for Sq == Sk and the end-aligned causal mask is built otherwise. It gives the mean of v for a query row its
    masks leave no key, where the dialect (torch) gives zeros, so those rows are zeroed (see `_live_rows`)."""
    sq, sk = q.shape[-2], k.shape[-2]
    bias = keep = None
    if mask is not None and mask.dtype == jnp.bool_:
        keep = _to_bnts(mask, sq, sk)
    elif mask is not None:
        bias = _to_bnts(mask, sq, sk).astype(q.dtype)
    # A causal mask hides keys with a finite fill, weaker than a float mask's finfo.min: with one, it is -inf in it.
    is_causal = causal and sq == sk and bias is None
    if causal and bias is not None:
        bias = jnp.where(_causal_keep(sq, sk), bias, -jnp.inf)
    elif causal and not is_causal:
        keep = _causal_keep(sq, sk) if keep is None else keep & _causal_keep(sq, sk)
    # In float32 for float16/bfloat16, as torch's CPU kernels compute (and XLA's CPU dot has no f16 x f16 -> f32).
    dtype = opmath(q.dtype)
    out = jax.nn.dot_product_attention(*(jnp.swapaxes(t, 1, 2).astype(dtype) for t in (q, k, v)),
                                       None if bias is None else bias.astype(dtype), keep, scale=scale,
                                       is_causal=is_causal)
    out = jnp.swapaxes(out, 1, 2)
    if mask is not None or (causal and not is_causal and not (is_static(sq) and is_static(sk) and sq < sk)):
        out = jnp.where(_live_rows(keep, bias, is_causal, sq, sk), out, jnp.zeros((), out.dtype))
    return out.astype(q.dtype)


def _live_rows(keep: Array | None, bias: Array | None, is_causal: bool, sq: Size, sk: Size) -> Array:
    """[B or 1, H or 1, Sq, 1], True where a query row has a key its masks keep (not hidden by `keep` or the
    causal mask, no -inf in `bias`); only masks or a causal Sq > Sk can leave a row none."""
    masks = [keep, None if bias is None else bias != -jnp.inf, _causal_keep(sq, sk) if is_causal else None]
    return jnp.any(functools.reduce(operator.and_, [m for m in masks if m is not None]), axis=-1, keepdims=True)


@op(OPS["add_layer_norm"])
def add_layer_norm(x: Array, residual: Array, weight: Array, bias: Array | None,
                   eps: float) -> tuple[Array, Array]:
    """(layer_norm(x + residual) over the last dim, x + residual); getitem nodes pick the two apart."""
    total = x + residual
    return native_layer_norm(total, total.shape[-1:], weight, bias, eps)[0], total


@op(OPS["bias_gelu"])
def bias_gelu(x: Array, bias: Array, approximate: str) -> Array:
    """gelu(x + bias), erf or tanh form as torch's `approximate`."""
    return gelu(x + bias, approximate=approximate)


@op(OPS["rms_norm"])
def rms_norm(x: Array, weight: Array, eps: float) -> Array:
    """weight * (x / sqrt(mean(x^2) + eps)), normalized in float32 and cast back to x's dtype first."""
    h = x.astype(jnp.float32)
    h = h * lax.rsqrt(jnp.mean(h * h, axis=-1, keepdims=True) + eps)
    return weight * h.astype(x.dtype)


@op(OPS["rotary_embedding"])
def rotary_embedding(x: Array, cos: Array, sin: Array) -> Array:
    """x * cat(cos, cos) + rotate_half(x) * cat(sin, sin), the angles [..., D/2] given once for both halves."""
    cos, sin = jnp.concatenate([cos, cos], axis=-1), jnp.concatenate([sin, sin], axis=-1)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin

"""Neural-network ops: activations, softmax, normalizations, convolution, embedding, attention, dropout, distances.

Low-precision inputs are normalized, soft-maxed and convolved in float32 and rounded once, as torch's CPU kernels.
"""

from __future__ import annotations

import math
import operator
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np
from jax import lax
from torch.ops import aten

from crossgraph.compiler.jaxlower.dtypes import opmath, promote
from crossgraph.compiler.jaxlower.elementwise import pointwise
from crossgraph.compiler.jaxlower.linalg import product
from crossgraph.compiler.jaxlower.reductions import axis
from crossgraph.compiler.jaxlower.registry import argument, op

Array = jax.Array


# ---- activations ------------------------------------------------------------------------------------------------
@op(aten.relu.default)
def relu(x: Array) -> Array:
    """max(x, 0)."""
    return jnp.maximum(x, jnp.zeros((), x.dtype))


@op(aten.gelu.default)
def gelu(x: Array, *, approximate: str = "none") -> Array:
    """x * Phi(x), or its tanh approximation, in torch's formulas."""
    if approximate == "tanh":
        inner = math.sqrt(2 / math.pi)
        return pointwise(lambda v: 0.5 * v * (1 + jnp.tanh(inner * (v + 0.044715 * v * v * v))), x)
    return pointwise(lambda v: 0.5 * v * (1 + jsp.erf(v * (1 / math.sqrt(2)))), x)


@op(aten.elu.default)
def elu(x: Array, alpha: float = 1.0, scale: float = 1.0, input_scale: float = 1.0) -> Array:
    """x for x > 0, else alpha * (exp(x * input_scale) - 1), all times scale."""
    return pointwise(lambda v: jnp.where(v > 0, v * scale, jnp.expm1(v * input_scale) * (alpha * scale)), x)


@op(aten.leaky_relu.default)
def leaky_relu(x: Array, negative_slope: float = 0.01) -> Array:
    """x for x > 0, else negative_slope * x."""
    return pointwise(lambda v: jnp.where(v > 0, v, v * negative_slope), x)


@op(aten.hardtanh.default)
def hardtanh(x: Array, min_val: float = -1.0, max_val: float = 1.0) -> Array:
    """x clamped to [min_val, max_val]."""
    return pointwise(lambda v: jnp.minimum(jnp.maximum(v, min_val), max_val), x)


# ---- softmax ----------------------------------------------------------------------------------------------------
@op(aten._softmax.default)
def softmax(x: Array, dim: int, half_to_float: bool = False) -> Array:
    """exp(x - max) / sum over `dim`, in float32 for low precision (float32 out if half_to_float)."""
    out = jnp.float32 if half_to_float else x.dtype
    return jax.nn.softmax(x.astype(opmath(x.dtype)), axis=axis(x, dim)).astype(out)


@op(aten._log_softmax.default)
def log_softmax(x: Array, dim: int, half_to_float: bool = False) -> Array:
    """x - logsumexp(x) over `dim`, in float32 for low precision."""
    out = jnp.float32 if half_to_float else x.dtype
    return jax.nn.log_softmax(x.astype(opmath(x.dtype)), axis=axis(x, dim)).astype(out)


# ---- normalization ----------------------------------------------------------------------------------------------
def _moments(work: Array, dims: tuple[int, ...]) -> tuple[Array, Array]:
    """Mean and biased variance over `dims`, kept as size-1 dims."""
    mean = jnp.mean(work, axis=dims, keepdims=True)
    centered = work - mean
    return mean, jnp.mean(centered * centered, axis=dims, keepdims=True)


def _affine(x: Array, weight: Array | None, bias: Array | None, shape: tuple[int, ...]) -> Array:
    if weight is not None:
        x = x * weight.astype(x.dtype).reshape(shape)
    if bias is not None:
        x = x + bias.astype(x.dtype).reshape(shape)
    return x


@op(aten.native_layer_norm.default)
def native_layer_norm(x: Array, normalized_shape: Sequence[int], weight: Array | None, bias: Array | None,
                      eps: float) -> tuple[Array, Array, Array]:
    """(normalized, mean, rstd) over the last len(normalized_shape) dims; mean and rstd keep them as size 1."""
    dims = tuple(range(x.ndim - len(normalized_shape), x.ndim))
    work = x.astype(opmath(x.dtype))
    mean, var = _moments(work, dims)
    rstd = lax.rsqrt(var + eps)
    out = _affine((work - mean) * rstd, weight, bias, work.shape[x.ndim - len(normalized_shape):])
    return out.astype(x.dtype), mean.astype(x.dtype), rstd.astype(x.dtype)


@op(aten.native_group_norm.default)
def native_group_norm(x: Array, weight: Array | None, bias: Array | None, N: int, C: int, HxW: int, group: int,
                      eps: float) -> tuple[Array, Array, Array]:
    """(normalized, mean [N, group], rstd [N, group]): statistics per sample over each group of channels."""
    work = x.astype(opmath(x.dtype)).reshape(x.shape[0], group, -1)
    mean, var = _moments(work, (2,))
    rstd = lax.rsqrt(var + eps)
    out = ((work - mean) * rstd).reshape(x.shape)
    out = _affine(out, weight, bias, (1, C) + (1,) * (x.ndim - 2))
    return out.astype(x.dtype), mean[..., 0].astype(x.dtype), rstd[..., 0].astype(x.dtype)


def batch_norm(x: Array, weight: Array | None, bias: Array | None, mean: Array, var: Array,
               eps: float) -> Array:
    """(x - mean) / sqrt(var + eps) * weight + bias, per channel (dim 1)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    work = x.astype(opmath(x.dtype))
    invstd = lax.rsqrt(var.astype(work.dtype) + eps).reshape(shape)
    out = (work - mean.astype(work.dtype).reshape(shape)) * invstd
    return _affine(out, weight, bias, shape).astype(x.dtype)


def _batch_statistics(x: Array) -> tuple[Array, Array]:
    """Per-channel mean and biased variance over every dim but 1."""
    dims = (0,) + tuple(range(2, x.ndim))
    mean, var = _moments(x.astype(opmath(x.dtype)), dims)
    return mean.reshape(-1), var.reshape(-1)


def _empty(like: Array | None, x: Array) -> Array:
    return jnp.zeros((0,), (like if like is not None else x).dtype)


@op(aten._native_batch_norm_legit_no_training.default)
def batch_norm_inference(x: Array, weight: Array | None, bias: Array | None, running_mean: Array,
                         running_var: Array, momentum: float, eps: float) -> tuple[Array, Array, Array]:
    """Batch norm with running statistics; the saved-statistics outputs are empty, as in torch."""
    out = batch_norm(x, weight, bias, running_mean, running_var, eps)
    return out, _empty(running_mean, x), _empty(running_mean, x)


def _training_batch_norm(x: Array, weight: Array | None, bias: Array | None,
                         eps: float) -> tuple[Array, Array, Array]:
    mean, var = _batch_statistics(x)
    return batch_norm(x, weight, bias, mean, var, eps), mean.astype(x.dtype), lax.rsqrt(var + eps).astype(x.dtype)


@op(aten._native_batch_norm_legit.default)
def batch_norm_legit(x: Array, weight: Array | None, bias: Array | None, running_mean: Array, running_var: Array,
                     training: bool, momentum: float, eps: float) -> tuple[Array, Array, Array]:
    """Batch statistics when training (the running statistics' in-place update has no functional result here)."""
    if training:
        return _training_batch_norm(x, weight, bias, eps)
    return batch_norm_inference(x, weight, bias, running_mean, running_var, momentum, eps)


@op(aten._native_batch_norm_legit.no_stats)
def batch_norm_no_stats(x: Array, weight: Array | None, bias: Array | None, training: bool, momentum: float,
                        eps: float) -> tuple[Array, Array, Array]:
    """Batch norm with batch statistics and no running ones."""
    return _training_batch_norm(x, weight, bias, eps)


@op(aten.native_batch_norm.default)
def native_batch_norm(x: Array, weight: Array | None, bias: Array | None, running_mean: Array | None,
                      running_var: Array | None, training: bool, momentum: float,
                      eps: float) -> tuple[Array, Array, Array]:
    """Batch norm: batch statistics when training (or without running ones), else running ones."""
    if training or running_mean is None:
        return _training_batch_norm(x, weight, bias, eps)
    return batch_norm_inference(x, weight, bias, running_mean, running_var, momentum, eps)


@op(aten._native_batch_norm_legit_functional.default)
def batch_norm_functional(x: Array, weight: Array | None, bias: Array | None, running_mean: Array,
                          running_var: Array, training: bool, momentum: float,
                          eps: float) -> tuple[Array, Array, Array, Array, Array]:
    """Like _native_batch_norm_legit, plus the updated running mean and (unbiased) running variance."""
    if not training:
        return (*batch_norm_inference(x, weight, bias, running_mean, running_var, momentum, eps),
                running_mean, running_var)
    out, mean, rstd = _training_batch_norm(x, weight, bias, eps)
    count = x.size // x.shape[1]
    _, var = _batch_statistics(x)
    new_mean = running_mean * (1 - momentum) + mean.astype(running_mean.dtype) * momentum
    new_var = running_var * (1 - momentum) + (var * (count / max(count - 1, 1))).astype(running_var.dtype) * momentum
    return out, mean, rstd, new_mean, new_var


# ---- convolution ------------------------------------------------------------------------------------------------
def _per_dim(values: Sequence[int], spatial: int) -> tuple[int, ...]:
    return tuple(values) * spatial if len(values) == 1 else tuple(values)


def _dimension_numbers(spatial: int) -> tuple[str, str, str]:
    names = "DHW"[-spatial:] if spatial <= 3 else None
    if names is None:
        raise ValueError(f"convolution over {spatial} spatial dims is not supported")
    return "NC" + names, "OI" + names, "NC" + names


@op(aten.convolution.default)
def convolution(x: Array, weight: Array, bias: Array | None, stride: Sequence[int], padding: Sequence[int],
                dilation: Sequence[int], transposed: bool, output_padding: Sequence[int], groups: int) -> Array:
    """N-d convolution (or its transpose) over NC... input with O I ... weights, as torch.nn.functional.conv*."""
    spatial = weight.ndim - 2
    unbatched = x.ndim == spatial + 1
    if unbatched:
        x = x[None]
    stride, padding, dilation = (_per_dim(v, spatial) for v in (stride, padding, dilation))
    dtype = promote(x.dtype, weight.dtype)
    x, weight = x.astype(dtype), weight.astype(dtype)
    numbers = _dimension_numbers(spatial)
    if transposed:
        output_padding = _per_dim(output_padding, spatial) if output_padding else (0,) * spatial
        kernel = weight.shape[2:]
        cin, cout_per_group = weight.shape[0], weight.shape[1]
        weight = weight.reshape((groups, cin // groups, cout_per_group) + kernel)
        weight = jnp.swapaxes(weight, 1, 2).reshape((groups * cout_per_group, cin // groups) + kernel)
        weight = jnp.flip(weight, tuple(range(2, 2 + spatial)))
        pads = [(d * (k - 1) - p, d * (k - 1) - p + o)
                for k, p, d, o in zip(kernel, padding, dilation, output_padding)]
        out = lax.conv_general_dilated(x, weight, (1,) * spatial, pads, lhs_dilation=stride, rhs_dilation=dilation,
                                       dimension_numbers=numbers, feature_group_count=groups,
                                       precision=lax.Precision.HIGHEST, preferred_element_type=opmath(dtype))
    else:
        out = lax.conv_general_dilated(x, weight, stride, [(p, p) for p in padding], rhs_dilation=dilation,
                                       dimension_numbers=numbers, feature_group_count=groups,
                                       precision=lax.Precision.HIGHEST, preferred_element_type=opmath(dtype))
    if bias is not None:
        out = out + bias.astype(out.dtype).reshape((1, -1) + (1,) * spatial)
    out = out.astype(dtype)
    return out[0] if unbatched else out


# ---- embedding, attention, dropout ------------------------------------------------------------------------------
@op(aten.embedding.default)
def embedding(weight: Array, indices: Array, padding_idx: int = -1, scale_grad_by_freq: bool = False,
              sparse: bool = False) -> Array:
    """The rows of `weight` at `indices`."""
    return jnp.take(weight, indices, axis=0)


def _attention_dropout(node: Any) -> str | None:
    p = argument(node, 4, "dropout_p", 0.0)
    return f"dropout_p={p} is random; lower the model in eval mode" if p else None


@op(aten.scaled_dot_product_attention.default, refuse=_attention_dropout)
def scaled_dot_product_attention(q: Array, k: Array, v: Array, attn_mask: Array | None = None,
                                 dropout_p: float = 0.0, is_causal: bool = False, *, scale: float | None = None,
                                 enable_gqa: bool = False) -> Array:
    """softmax(q k^T * scale + mask) v in float32; rows every key is masked from give zeros, as torch's math kernel."""
    dtype = q.dtype
    if enable_gqa and k.ndim >= 3 and k.shape[-3] != q.shape[-3]:
        repeats = q.shape[-3] // k.shape[-3]
        k, v = jnp.repeat(k, repeats, axis=-3), jnp.repeat(v, repeats, axis=-3)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    work = opmath(dtype)
    scores = product(q.astype(work), jnp.swapaxes(k, -1, -2).astype(work)) * scale
    allowed = None
    if is_causal:
        allowed = jnp.tril(jnp.ones((q.shape[-2], k.shape[-2]), jnp.bool_))
    if attn_mask is not None and attn_mask.dtype == jnp.bool_:
        allowed = attn_mask if allowed is None else allowed & attn_mask
    elif attn_mask is not None:
        scores = scores + attn_mask.astype(work)
    if allowed is not None:
        scores = jnp.where(allowed, scores, -jnp.inf)
    weights = jax.nn.softmax(scores, axis=-1)
    weights = jnp.where(jnp.all(scores == -jnp.inf, axis=-1, keepdims=True), 0, weights)
    return product(weights, v.astype(work)).astype(dtype)


def _random_dropout(node: Any) -> str | None:
    p, train = argument(node, 1, "p"), argument(node, 2, "train")
    return f"dropout with p={p} in training mode is random; lower the model in eval mode" \
        if p and train is not False else None


@op(aten.native_dropout.default, refuse=_random_dropout)
def native_dropout(x: Array, p: float, train: bool | None) -> tuple[Array, Array]:
    """Inference dropout: the input unchanged and an all-true mask."""
    return x, jnp.ones(x.shape, jnp.bool_)


# ---- distances --------------------------------------------------------------------------------------------------
def _p_norm(diff: Array, p: float, axis_: int) -> Array:
    mag = jnp.abs(diff)
    if p == 0:
        return jnp.sum((mag != 0).astype(mag.dtype), axis=axis_)
    if p == float("inf"):
        return jnp.max(mag, axis=axis_)
    if p == 1:
        return jnp.sum(mag, axis=axis_)
    if p == 2:
        return jnp.sqrt(jnp.sum(mag * mag, axis=axis_))
    return jnp.sum(mag ** p, axis=axis_) ** (1 / p)


@op(aten._cdist_forward.default)
def cdist(x1: Array, x2: Array, p: float, compute_mode: int | None = None) -> Array:
    """p-norm distances between the rows of x1 [..., P, M] and x2 [..., R, M]: [..., P, R]."""
    work = opmath(x1.dtype)
    diff = x1.astype(work)[..., :, None, :] - x2.astype(work)[..., None, :, :]
    return _p_norm(diff, p, -1).astype(x1.dtype)


@op(aten._pdist_forward.default)
def pdist(x: Array, p: float = 2) -> Array:
    """p-norm distances between rows i < j of x [N, M], in row-major order of the pairs."""
    rows, cols = np.triu_indices(x.shape[0], 1)
    work = x.astype(opmath(x.dtype))
    return _p_norm(work[rows] - work[cols], p, -1).astype(x.dtype)


# ---- embedding bags ---------------------------------------------------------------------------------------------
def _bag_statistics_used(node: Any) -> str | None:
    """Only the bags themselves are lowered; offset2bag, bag_size and max_indices follow torch's kernel quirks."""
    aux = [u for u in node.users if not (u.target is operator.getitem and u.args[1] == 0)]
    if any(u.users or u.target is not operator.getitem for u in aux):
        return "its offset2bag/bag_size/max_indices outputs are used"
    return None


@op(aten._embedding_bag.default, aten._embedding_bag_forward_only.default, refuse=_bag_statistics_used)
def embedding_bag(weight: Array, indices: Array, offsets: Array, scale_grad_by_freq: bool = False, mode: int = 0,
                  sparse: bool = False, per_sample_weights: Array | None = None, include_last_offset: bool = False,
                  padding_idx: int = -1) -> tuple[Array, Array, Array, Array]:
    """Sum (0), mean (1) or max (2) of the embeddings of each bag [offsets[b], offsets[b + 1]); padding_idx rows
    are left out and empty bags are zeros. Only the first output is meaningful (see the refusal)."""
    bags = offsets.shape[0] - 1 if include_last_offset else offsets.shape[0]
    bag = jnp.searchsorted(offsets, jnp.arange(indices.shape[0]), side="right") - 1
    keep = indices != padding_idx if padding_idx >= 0 else jnp.ones(indices.shape, jnp.bool_)
    bag = jnp.where(keep, bag, bags)  # rows of padding go to a bag past the end, which is dropped
    work = opmath(weight.dtype)
    rows = jnp.take(weight, indices, axis=0).astype(work)
    if per_sample_weights is not None:
        rows = rows * per_sample_weights.astype(work)[:, None]
    count = jax.ops.segment_sum(keep.astype(work), bag, num_segments=bags)[:, None]
    if mode == 2:
        out = jnp.where(count > 0, jax.ops.segment_max(rows, bag, num_segments=bags), 0)
    else:
        out = jax.ops.segment_sum(rows, bag, num_segments=bags)
        out = out / jnp.maximum(count, 1) if mode == 1 else out
    empty = jnp.zeros((0,), indices.dtype)
    return out.astype(weight.dtype), empty, empty, empty

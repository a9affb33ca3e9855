"""Backward ops of training graphs: JAX vector-Jacobian products of this table's own forward translations (so a
forward fix is a backward fix), or torch's closed forms where the op is given the forward's indices or statistics."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from torch.ops import aten

from crossgraph.compiler.jaxlower.dtypes import opmath
from crossgraph.compiler.jaxlower.nn import convolution
from crossgraph.compiler.jaxlower.pooling import adaptive_avg_pool, avg_pool
from crossgraph.compiler.jaxlower.registry import op

Array = jax.Array


def _masked(values: Sequence[Array | None], mask: Sequence[bool]) -> tuple[Array | None, ...]:
    return tuple(v if m else None for v, m in zip(values, mask))


@op(aten.convolution_backward.default)
def convolution_backward(grad_output: Array, x: Array, weight: Array, bias_sizes: Sequence[int] | None,
                         stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], transposed: bool,
                         output_padding: Sequence[int], groups: int,
                         output_mask: Sequence[bool]) -> tuple[Array | None, ...]:
    """(grad_input, grad_weight, grad_bias) of convolution, each None where output_mask says so."""
    def forward(x_: Array, w_: Array) -> Array:
        return convolution(x_, w_, None, stride, padding, dilation, transposed, output_padding, groups)

    _, pullback = jax.vjp(forward, x, weight)
    grad_x, grad_w = pullback(grad_output.astype(x.dtype))
    not_channels = tuple(d for d in range(grad_output.ndim) if d != grad_output.ndim - weight.ndim + 1)
    grad_b = jnp.sum(grad_output.astype(opmath(grad_output.dtype)), axis=not_channels).astype(grad_output.dtype)
    return _masked((grad_x, grad_w, grad_b), output_mask)


@op(aten.avg_pool2d_backward.default)
def avg_pool2d_backward(grad_output: Array, x: Array, kernel_size: Sequence[int], stride: Sequence[int],
                        padding: Sequence[int], ceil_mode: bool, count_include_pad: bool,
                        divisor_override: int | None) -> Array:
    """Gradient of avg_pool2d with respect to its input (the vjp of the forward translation)."""
    _, pullback = jax.vjp(lambda x_: avg_pool(x_, 2, kernel_size, stride, padding, ceil_mode, count_include_pad,
                                              divisor_override), x)
    return pullback(grad_output.astype(x.dtype))[0]


@op(aten._adaptive_avg_pool2d_backward.default)
def adaptive_avg_pool2d_backward(grad_output: Array, x: Array) -> Array:
    """Gradient of adaptive average pooling with respect to its input (a vjp)."""
    _, pullback = jax.vjp(lambda x_: adaptive_avg_pool(x_, grad_output.shape[-2:]), x)
    return pullback(grad_output.astype(x.dtype))[0]


@op(aten.max_pool2d_with_indices_backward.default)
def max_pool2d_with_indices_backward(grad_output: Array, x: Array, kernel_size: Sequence[int],
                                     stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                                     ceil_mode: bool, indices: Array) -> Array:
    """Each output's gradient added at the input position its index names (flat over the last two dims)."""
    lead = x.shape[:-2]
    flat_grad = grad_output.reshape(lead + (-1,)).astype(opmath(x.dtype))
    flat_index = indices.reshape(lead + (-1,))
    rows = jnp.zeros(lead + (x.shape[-2] * x.shape[-1],), flat_grad.dtype)
    grad = jax.vmap(lambda r, i, g: r.at[i].add(g))(rows.reshape((-1,) + rows.shape[-1:]),
                                                     flat_index.reshape((-1,) + flat_index.shape[-1:]),
                                                     flat_grad.reshape((-1,) + flat_grad.shape[-1:]))
    return grad.reshape(x.shape).astype(x.dtype)


@op(aten.embedding_dense_backward.default)
def embedding_dense_backward(grad_output: Array, indices: Array, num_weights: int, padding_idx: int,
                             scale_grad_by_freq: bool) -> Array:
    """Rows of grad_output summed into the rows their indices name; padding_idx gets none; with
    scale_grad_by_freq each row is divided by how often its index occurs."""
    dim = grad_output.shape[-1]
    index = indices.reshape(-1)
    grad = grad_output.reshape(-1, dim).astype(opmath(grad_output.dtype))
    grad = jnp.where((index == padding_idx)[:, None], 0, grad)
    if scale_grad_by_freq:
        counts = jnp.zeros((num_weights,), grad.dtype).at[index].add(1)
        grad = grad / counts[index][:, None]
    return jnp.zeros((num_weights, dim), grad.dtype).at[index].add(grad).astype(grad_output.dtype)


def _normalized_backward(grad: Array, x: Array, mean: Array, rstd: Array, weight: Array | None,
                         axes: tuple[int, ...], channel_shape: tuple[int, ...]) -> tuple[Array, Array, Array]:
    """Gradients of y = (x - mean) * rstd * weight + bias from the forward's saved statistics (torch's closed form):
    dx = rstd * (g*w - mean(g*w) - xhat * mean(g*w * xhat)) over the normalized `axes`; dw and db per channel."""
    work = opmath(x.dtype)
    g, xw = grad.astype(work), x.astype(work)
    xhat = (xw - mean.astype(work)) * rstd.astype(work)
    gw = g if weight is None else g * weight.astype(work).reshape(channel_shape)
    dx = rstd.astype(work) * (gw - jnp.mean(gw, axis=axes, keepdims=True)
                              - xhat * jnp.mean(gw * xhat, axis=axes, keepdims=True))
    return dx.astype(x.dtype), g * xhat, g


@op(aten.native_layer_norm_backward.default)
def native_layer_norm_backward(grad_out: Array, x: Array, normalized_shape: Sequence[int], mean: Array,
                               rstd: Array, weight: Array | None, bias: Array | None,
                               output_mask: Sequence[bool]) -> tuple[Array | None, ...]:
    """(grad_input, grad_weight, grad_bias) of layer norm over the last len(normalized_shape) dims."""
    k = len(normalized_shape)
    axes = tuple(range(x.ndim - k, x.ndim))
    dx, dw, db = _normalized_backward(grad_out, x, mean, rstd, weight, axes, tuple(normalized_shape))
    batch = tuple(range(x.ndim - k))
    param_dtype = (weight if weight is not None else x).dtype
    dw, db = (jnp.sum(t, axis=batch).astype(param_dtype) for t in (dw, db))
    return _masked((dx, dw, db), output_mask)


@op(aten.native_group_norm_backward.default)
def native_group_norm_backward(grad_out: Array, x: Array, mean: Array, rstd: Array, weight: Array | None, N: int,
                               C: int, HxW: int, group: int, output_mask: Sequence[bool]) -> tuple[Array | None, ...]:
    """(grad_input, grad_weight, grad_bias) of group norm: statistics per (sample, group), affine per channel."""
    shape = (x.shape[0], group, C // group, -1)
    dx, dw, db = _normalized_backward(grad_out.reshape(shape), x.reshape(shape), mean[:, :, None, None],
                                      rstd[:, :, None, None], weight, (2, 3), (1, group, C // group, 1))
    param_dtype = (weight if weight is not None else x).dtype
    dw, db = (jnp.sum(t, axis=(0, 3)).reshape(C).astype(param_dtype) for t in (dw, db))
    return _masked((dx.reshape(x.shape), dw, db), output_mask)

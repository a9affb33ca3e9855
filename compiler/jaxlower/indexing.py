"""Indexing, gathering and scattering (index, gather, scatter*, index_select, where, masked ops, searchsorted, ...).

Indices are int32 under the width policy; negative indices count from the end as in torch. Boolean-mask indexing
whose result size depends on the mask's values cannot be expressed in JAX and is refused.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import torch
from jax import lax
from torch.ops import aten

from crossgraph.compiler.jaxlower.dtypes import cast, is_exact, is_scalar, promote, result_type
from crossgraph.compiler.jaxlower.reductions import axis, index_dtype
from crossgraph.compiler.jaxlower.registry import Unsupported, argument, op
from crossgraph.compiler.jaxlower.shape import strided_positions
from crossgraph.compiler.jaxlower.symbolic import Size, clamp_position, size_max, wrap_index

Array = jax.Array


@op(aten.where.self)
def where(condition: Array, x: Any, y: Any) -> Array:
    """condition ? x : y, with x and y promoted as torch promotes."""
    dtype = result_type(x, y)
    return jnp.where(condition.astype(jnp.bool_), cast(x, dtype), cast(y, dtype))


@op(aten.masked_fill.Scalar, aten.masked_fill.Tensor)
def masked_fill(x: Array, mask: Array, value: Any) -> Array:
    """x with `value` where `mask` is true."""
    return jnp.where(mask, cast(value if is_scalar(value) else value.reshape(()), x.dtype), x)


def _mask_indices(node: Any) -> str | None:
    for index in argument(node, 1, "indices", []) or []:
        val = getattr(index, "meta", {}).get("val")
        if val is not None and val.dtype in (torch.bool, torch.uint8):
            return "boolean-mask indices (the result size depends on the mask's values)"
    return None


def _key(indices: Sequence[Array | None]) -> tuple[Any, ...]:
    return tuple(slice(None) if i is None else i for i in indices)


@op(aten.index.Tensor, refuse=_mask_indices)
def index(x: Array, indices: Sequence[Array | None]) -> Array:
    """x[indices] with numpy's (and torch's) rules for advanced indices; None keeps a dimension whole."""
    return x[_key(indices)]


def _boolean_put(x: Array, mask: Array, values: Array, accumulate: bool) -> Array:
    """x[mask] = values (or +=) where `values` holds one element: a masked select of the same shape as x."""
    if values.size != 1:
        raise Unsupported("boolean-mask index_put with more than one value (the count depends on the mask)")
    mask = mask.reshape(mask.shape + (1,) * (x.ndim - mask.ndim)).astype(jnp.bool_)
    value = cast(values.reshape(()), x.dtype)
    return jnp.where(mask, x + value if accumulate else value, x)


@op(aten.index_put.default)
def index_put(x: Array, indices: Sequence[Array | None], values: Array, accumulate: bool = False) -> Array:
    """x[indices] = values, or += when `accumulate` (duplicates then add up)."""
    present = [i for i in indices if i is not None]
    if len(present) == 1 and indices[0] is not None and indices[0].dtype in (jnp.bool_, jnp.uint8):
        return _boolean_put(x, indices[0], values, accumulate)
    ref = x.at[_key(indices)]
    values = cast(values, x.dtype)
    return ref.add(values) if accumulate else ref.set(values)


@op(aten.index_select.default)
def index_select(x: Array, dim: int, index: Array) -> Array:
    """The slices of x along `dim` at `index`, in index order."""
    return jnp.take(x, index.reshape(-1), axis=axis(x, dim)) if x.ndim else x


def _grid(index: Array, dim: int) -> tuple[Array, ...]:
    """Positions of every element of `index` with `index` itself along `dim`: the key of gather/scatter."""
    if not index.ndim:
        return ()
    ax = axis(index, dim)
    return tuple(index if d == ax else lax.broadcasted_iota(jnp.int32, index.shape, d) for d in range(index.ndim))


def _wrapped(index: Array, size: Size) -> Array:
    return jnp.where(index < 0, index + cast(size, index.dtype), index)


@op(aten.gather.default)
def gather(x: Array, dim: int, index: Array, *, sparse_grad: bool = False) -> Array:
    """out[i, j] = x[index[i, j], j] (for dim 0): index may be smaller than x outside `dim`."""
    if not x.ndim:
        return jnp.broadcast_to(x, index.shape)
    ax = axis(x, dim)
    key = _grid(_wrapped(index, x.shape[ax]), ax)
    return x[key]


def _source(src: Any, index: Array, dtype: Any) -> Array:
    """A scatter's source restricted to index's shape (src may be larger), or a scalar broadcast to it."""
    if is_scalar(src):
        return jnp.full(index.shape, src, dtype)
    return cast(src[tuple(slice(0, n) for n in index.shape)], dtype) if src.ndim else cast(src, dtype)


_REDUCE_ALIASES = {"add": "sum", "multiply": "prod"}


def scatter_into(x: Array, dim: int, index: Array, src: Any, reduce: str | None = None,
                 include_self: bool = True) -> Array:
    """x with `src` scattered along `dim` at `index`: replaced, or combined by sum/prod/mean/amax/amin."""
    if not x.ndim:
        x, index = x.reshape(1), index.reshape(1)
        src = src if is_scalar(src) else src.reshape(1)
        return scatter_into(x, 0, index, src, reduce, include_self).reshape(())
    ax = axis(x, dim)
    key = _grid(_wrapped(index, x.shape[ax]), ax)
    values = _source(src, index, x.dtype)
    reduce = _REDUCE_ALIASES.get(reduce, reduce)
    if reduce is None:
        return x.at[key].set(values)
    neutral = {"sum": 0, "mean": 0, "prod": 1,
               "amax": jnp.iinfo(x.dtype).min if is_exact(x.dtype) else -jnp.inf,
               "amin": jnp.iinfo(x.dtype).max if is_exact(x.dtype) else jnp.inf}[reduce]
    base = x if include_self else x.at[key].set(jnp.asarray(neutral, x.dtype))
    ref = base.at[key]
    if reduce in ("sum", "mean"):
        out = ref.add(values)
    else:
        out = {"prod": ref.multiply, "amax": ref.max, "amin": ref.min}[reduce](values)
    if reduce != "mean":
        return out
    count = jnp.zeros(x.shape, jnp.int32).at[key].add(1) + int(include_self)
    count = jnp.maximum(count, 1)
    return out // count.astype(x.dtype) if is_exact(x.dtype) else (out / count).astype(x.dtype)


@op(aten.scatter.src, aten.scatter.value)
def scatter(x: Array, dim: int, index: Array, src: Any) -> Array:
    """x with `src` (or a scalar) written along `dim` at `index`."""
    return scatter_into(x, dim, index, src)


@op(aten.scatter.reduce)
def scatter_reduce_legacy(x: Array, dim: int, index: Array, src: Any, *, reduce: str) -> Array:
    """scatter combining with "add" or "multiply" (the older reduce spelling)."""
    return scatter_into(x, dim, index, src, reduce)


@op(aten.scatter_add.default)
def scatter_add(x: Array, dim: int, index: Array, src: Array) -> Array:
    """x with `src` added along `dim` at `index` (duplicates add up)."""
    return scatter_into(x, dim, index, src, "sum")


@op(aten.scatter_reduce.two)
def scatter_reduce(x: Array, dim: int, index: Array, src: Array, reduce: str, *, include_self: bool = True) -> Array:
    """x combined with `src` along `dim` at `index` by sum/prod/mean/amax/amin."""
    return scatter_into(x, dim, index, src, reduce, include_self)


def _along(x: Array, dim: int, index: Array, source: Any, reduce: str | None, include_self: bool = True) -> Array:
    """x with its slices along `dim` at `index` combined with `source`'s: index_add/copy/fill/reduce."""
    ax = axis(x, dim)
    moved = jnp.moveaxis(x, ax, 0) if x.ndim else x.reshape(1)
    rows = _wrapped(index.reshape(-1), moved.shape[0])
    if is_scalar(source) or not source.ndim:
        values = jnp.broadcast_to(cast(source, x.dtype), (rows.shape[0],) + moved.shape[1:])
    else:
        values = jnp.moveaxis(cast(source, x.dtype), ax, 0)
    key = jnp.broadcast_to(rows.reshape((-1,) + (1,) * (moved.ndim - 1)), values.shape)
    out = scatter_into(moved, 0, key, values, reduce, include_self)
    return jnp.moveaxis(out, 0, ax) if x.ndim else out.reshape(())


@op(aten.index_add.default)
def index_add(x: Array, dim: int, index: Array, source: Array, *, alpha: Any = 1) -> Array:
    """x with alpha * source's slices added along `dim` at `index`."""
    return _along(x, dim, index, source if alpha == 1 else source * alpha, "sum")


@op(aten.index_copy.default)
def index_copy(x: Array, dim: int, index: Array, source: Array) -> Array:
    """x with source's slices written along `dim` at `index`."""
    return _along(x, dim, index, source, None)


@op(aten.index_fill.int_Scalar, aten.index_fill.int_Tensor)
def index_fill(x: Array, dim: int, index: Array, value: Any) -> Array:
    """x with `value` in every slice along `dim` at `index`."""
    return _along(x, dim, index, value, None)


@op(aten.index_reduce.default)
def index_reduce(x: Array, dim: int, index: Array, source: Array, reduce: str, *,
                 include_self: bool = True) -> Array:
    """x's slices along `dim` at `index` combined with source's by prod/mean/amax/amin."""
    return _along(x, dim, index, source, reduce, include_self)


@op(aten.select_scatter.default)
def select_scatter(x: Array, src: Array, dim: int, index: Size) -> Array:
    """x with `src` written into the slice x.select(dim, index)."""
    ax = axis(x, dim)
    position = wrap_index(index, x.shape[ax])
    return x.at[(slice(None),) * ax + (position,)].set(cast(src, x.dtype))


@op(aten.slice_scatter.default)
def slice_scatter(x: Array, src: Array, dim: int = 0, start: Size | None = None, end: Size | None = None,
                  step: int = 1) -> Array:
    """x with `src` written into x[start:end:step] along `dim`."""
    ax = axis(x, dim)
    size = x.shape[ax]
    lo = clamp_position(start, size, 0)
    hi = size_max(clamp_position(end, size, size), lo)
    return x.at[(slice(None),) * ax + (slice(lo, hi, step),)].set(cast(src, x.dtype))


@op(aten.diagonal_scatter.default)
def diagonal_scatter(x: Array, src: Array, offset: int = 0, dim1: int = 0, dim2: int = 1) -> Array:
    """x with `src` written onto the diagonal that diagonal(x, offset, dim1, dim2) reads."""
    a1, a2 = axis(x, dim1), axis(x, dim2)
    moved = jnp.moveaxis(x, (a1, a2), (-2, -1))
    count = src.shape[-1]
    rows = np.arange(count) + max(-offset, 0)
    cols = np.arange(count) + max(offset, 0)
    return jnp.moveaxis(moved.at[..., rows, cols].set(cast(src, x.dtype)), (-2, -1), (a1, a2))


@op(aten.as_strided_scatter.default)
def as_strided_scatter(x: Array, src: Array, size: Sequence[Size], stride: Sequence[int],
                       storage_offset: int | None = None) -> Array:
    """x with `src` written where an as_strided view of x would read."""
    positions = strided_positions(size, stride, storage_offset or 0)
    return x.reshape(-1).at[positions].set(cast(src, x.dtype)).reshape(x.shape)


@op(aten.masked_scatter.default)
def masked_scatter(x: Array, mask: Array, source: Array) -> Array:
    """Where the mask is true, the next element of `source` in row-major order; elsewhere x."""
    mask = jnp.broadcast_to(mask.astype(jnp.bool_), x.shape)
    order = jnp.cumsum(mask.reshape(-1).astype(jnp.int32)) - 1
    picked = jnp.take(cast(source, x.dtype).reshape(-1), jnp.clip(order, 0, None), mode="clip")
    return jnp.where(mask, picked.reshape(x.shape), x)


@op(aten.take.default)
def take(x: Array, index: Array) -> Array:
    """x's elements at flat (row-major) positions `index`."""
    flat = x.reshape(-1)
    return flat[_wrapped(index, flat.shape[0])]


@op(aten.put.default)
def put(x: Array, index: Array, source: Array, accumulate: bool = False) -> Array:
    """x with `source` written (or added) at flat positions `index`."""
    flat = x.reshape(-1)
    ref = flat.at[_wrapped(index.reshape(-1), flat.shape[0])]
    values = cast(source, x.dtype).reshape(-1)
    return (ref.add(values) if accumulate else ref.set(values)).reshape(x.shape)


def _search(sorted_sequence: Array, values: Array, right: bool, side: str | None, sorter: Array | None,
            out_int32: bool) -> Array:
    side = side or ("right" if right else "left")
    if sorter is not None:
        sorted_sequence = jnp.take_along_axis(sorted_sequence, sorter, axis=-1)
    dtype = promote(sorted_sequence.dtype, values.dtype)
    seq, vals = sorted_sequence.astype(dtype), values.astype(dtype)
    if seq.ndim <= 1:
        out = jnp.searchsorted(seq, vals, side=side)
    else:
        flat = jax.vmap(lambda s, v: jnp.searchsorted(s, v, side=side))
        out = flat(seq.reshape(-1, seq.shape[-1]), vals.reshape(-1, vals.shape[-1])).reshape(vals.shape)
    return out.astype(jnp.int32 if out_int32 else index_dtype())


@op(aten.searchsorted.Tensor)
def searchsorted(sorted_sequence: Array, x: Array, *, out_int32: bool = False, right: bool = False,
                 side: str | None = None, sorter: Array | None = None) -> Array:
    """Insertion points of x into the sorted last dim of `sorted_sequence`."""
    return _search(sorted_sequence, x, right, side, sorter, out_int32)


@op(aten.bucketize.Tensor)
def bucketize(x: Array, boundaries: Array, *, out_int32: bool = False, right: bool = False) -> Array:
    """The bucket of each element of x among the sorted 1-d `boundaries`."""
    return _search(boundaries, x, right, None, None, out_int32)


@op(aten.nonzero_static.default)
def nonzero_static(x: Array, *, size: int, fill_value: int = -1) -> Array:
    """Coordinates [size, ndim] of the first `size` nonzero elements, padded with fill_value."""
    if not x.ndim:
        return jnp.zeros((size, 0), index_dtype())
    coords = jnp.nonzero(x, size=size, fill_value=fill_value)
    return jnp.stack(coords, axis=1).astype(index_dtype())


def _data_dependent(what: str, fix: str) -> Any:
    """A refusal naming a data-dependent output shape (an unbacked size in the graph) and the static-shape fix."""
    return lambda node: (f"data-dependent output shape: {what} is known only at run time, and JAX needs static "
                         f"shapes; {fix}")


@op(aten.nonzero.default, refuse=_data_dependent(
        "the number of nonzero elements (torch.nonzero, torch.where(cond), a boolean mask's positions)",
        "use torch.nonzero_static(x, size=n), or mask instead of selecting: torch.where(cond, x, 0)"))
def nonzero(x: Array) -> Array:
    """Refused when lowering: its output length depends on the input's values."""
    raise AssertionError("refused before it runs")


@op(aten.masked_select.default, refuse=_data_dependent(
        "the number of elements torch.masked_select keeps", "mask instead of selecting: torch.where(mask, x, 0)"))
def masked_select(x: Array, mask: Array) -> Array:
    """Refused when lowering: its output length depends on the mask's values."""
    raise AssertionError("refused before it runs")

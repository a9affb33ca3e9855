"""Reductions, scans, sorting and selection over dimensions, with torch's accumulation dtypes and index results.

Integer and boolean sums and products accumulate in int64 (int32 under the width policy); float16 and bfloat16
accumulate in float32. Index results are int64 in torch and int32 here.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np
import torch
from jax import lax
from torch.ops import aten

from crossgraph.compiler.jaxlower.dtypes import cast, float_of, is_exact, opmath, to_jax
from crossgraph.compiler.jaxlower.registry import op

Array = jax.Array


def axes(x: Array, dim: int | Sequence[int] | None) -> tuple[int, ...]:
    """The axes an ATen `dim` argument names: None or [] mean all; negative dims count from the end."""
    if dim is None:
        return tuple(range(x.ndim))
    dims = [dim] if isinstance(dim, int) else list(dim)
    if not dims:
        return tuple(range(x.ndim))
    return tuple(sorted({d % x.ndim for d in dims})) if x.ndim else ()


def axis(x: Array, dim: int) -> int:
    """One dimension index, wrapped (a 0-d tensor accepts 0 and -1)."""
    return dim % x.ndim if x.ndim else 0


def index_dtype() -> np.dtype:
    """The dtype of index results: torch's int64 under the width policy."""
    return to_jax(torch.int64)


def _accumulated(x: Array, dtype: torch.dtype | None) -> tuple[Array, np.dtype]:
    """x cast for a sum or product, and the result dtype: `dtype` if given, int64 for integers, else x's dtype."""
    if dtype is not None:
        out = to_jax(dtype)
    elif is_exact(x.dtype):
        out = index_dtype()
    else:
        out = np.dtype(x.dtype)
    return x.astype(opmath(out)), out


@op(aten.sum.dim_IntList, aten.sum.default)
def sum_(x: Array, dim: Sequence[int] | None = None, keepdim: bool = False, *,
         dtype: torch.dtype | None = None) -> Array:
    """Sum over `dim` (all dims when None or empty)."""
    work, out = _accumulated(x, dtype)
    return jnp.sum(work, axis=axes(x, dim), keepdims=keepdim).astype(out)


@op(aten.prod.dim_int, aten.prod.default)
def prod(x: Array, dim: int | None = None, keepdim: bool = False, *, dtype: torch.dtype | None = None) -> Array:
    """Product over `dim` (all dims when None)."""
    work, out = _accumulated(x, dtype)
    return jnp.prod(work, axis=axes(x, dim), keepdims=keepdim).astype(out)


@op(aten.mean.dim, aten.mean.default)
def mean(x: Array, dim: Sequence[int] | None = None, keepdim: bool = False, *,
         dtype: torch.dtype | None = None) -> Array:
    """Mean over `dim`, accumulated in float32 for low precision."""
    out = to_jax(dtype) if dtype is not None else np.dtype(x.dtype)
    return jnp.mean(x.astype(opmath(out)), axis=axes(x, dim), keepdims=keepdim).astype(out)


@op(aten.amax.default, aten.max.default)
def amax(x: Array, dim: Sequence[int] = (), keepdim: bool = False) -> Array:
    """Maximum over `dim` (all dims when empty); NaN propagates."""
    return jnp.max(x, axis=axes(x, dim), keepdims=keepdim)


@op(aten.amin.default, aten.min.default)
def amin(x: Array, dim: Sequence[int] = (), keepdim: bool = False) -> Array:
    """Minimum over `dim` (all dims when empty); NaN propagates."""
    return jnp.min(x, axis=axes(x, dim), keepdims=keepdim)


def _truth(reduce: Any, x: Array, dim: Any, keepdim: bool) -> Array:
    out = reduce(x.astype(jnp.bool_), axis=axes(x, dim), keepdims=keepdim)
    return out.astype(jnp.uint8) if x.dtype == jnp.uint8 else out  # torch keeps uint8 for any/all of uint8


@op(aten.any.default, aten.any.dim, aten.any.dims)
def any_(x: Array, dim: Any = None, keepdim: bool = False) -> Array:
    """Whether any element over `dim` is nonzero."""
    return _truth(jnp.any, x, dim, keepdim)


@op(aten.all.default, aten.all.dim)
def all_(x: Array, dim: Any = None, keepdim: bool = False) -> Array:
    """Whether every element over `dim` is nonzero."""
    return _truth(jnp.all, x, dim, keepdim)


def _arg(reduce: Any, x: Array, dim: int | None, keepdim: bool) -> Array:
    if dim is None:
        out = reduce(x.reshape(-1), axis=0).astype(index_dtype())
        return out.reshape((1,) * x.ndim) if keepdim else out
    if x.ndim == 0:
        return jnp.zeros((), index_dtype())
    return reduce(x, axis=axis(x, dim), keepdims=keepdim).astype(index_dtype())


@op(aten.argmax.default)
def argmax(x: Array, dim: int | None = None, keepdim: bool = False) -> Array:
    """Index of the first maximum over `dim`, or over the flattened tensor when dim is None."""
    return _arg(jnp.argmax, x, dim, keepdim)


@op(aten.argmin.default)
def argmin(x: Array, dim: int | None = None, keepdim: bool = False) -> Array:
    """Index of the first minimum over `dim`, or over the flattened tensor when dim is None."""
    return _arg(jnp.argmin, x, dim, keepdim)


@op(aten.max.dim)
def max_dim(x: Array, dim: int, keepdim: bool = False) -> tuple[Array, Array]:
    """(maximum, index of the first maximum) over `dim`."""
    return amax(x, [dim], keepdim), argmax(x, dim, keepdim)


@op(aten.min.dim)
def min_dim(x: Array, dim: int, keepdim: bool = False) -> tuple[Array, Array]:
    """(minimum, index of the first minimum) over `dim`."""
    return amin(x, [dim], keepdim), argmin(x, dim, keepdim)


def variance(x: Array, dim: Any, correction: float, keepdim: bool) -> Array:
    """Sum of squared deviations over (N - correction), computed in float32 for low-precision input."""
    work = x.astype(opmath(x.dtype))
    dims = axes(x, dim)
    count = cast(math.prod(x.shape[d] for d in dims), work.dtype)
    centered = work - jnp.mean(work, axis=dims, keepdims=True)
    var = jnp.sum(centered * centered, axis=dims, keepdims=keepdim) / (count - correction)
    return var.astype(x.dtype)


@op(aten.var.correction)
def var(x: Array, dim: Any = None, *, correction: float | None = None, keepdim: bool = False) -> Array:
    """Variance over `dim` with `correction` (1 unless given)."""
    return variance(x, dim, 1 if correction is None else correction, keepdim)


@op(aten.var.dim)
def var_dim(x: Array, dim: Any, unbiased: bool = True, keepdim: bool = False) -> Array:
    """Variance over `dim`, unbiased unless told otherwise."""
    return variance(x, dim, int(unbiased), keepdim)


@op(aten.var_mean.correction)
def var_mean(x: Array, dim: Any = None, *, correction: float | None = None,
             keepdim: bool = False) -> tuple[Array, Array]:
    """(variance, mean) over `dim`."""
    return var(x, dim, correction=correction, keepdim=keepdim), mean(x, dim, keepdim)


@op(aten.std.correction)
def std(x: Array, dim: Any = None, *, correction: float | None = None, keepdim: bool = False) -> Array:
    """Standard deviation over `dim` with `correction`."""
    return jnp.sqrt(var(x, dim, correction=correction, keepdim=keepdim).astype(opmath(x.dtype))).astype(x.dtype)


@op(aten.logsumexp.default)
def logsumexp(x: Array, dim: Sequence[int], keepdim: bool = False) -> Array:
    """log(sum(exp(x))) over `dim`, stably."""
    out = x.dtype if not is_exact(x.dtype) else np.dtype(np.float32)
    return jsp.logsumexp(x.astype(opmath(out)), axis=axes(x, dim), keepdims=keepdim).astype(out)


def _scan(fn: Any, x: Array, dim: int, dtype: torch.dtype | None) -> Array:
    work, out = _accumulated(x, dtype)
    return fn(work, axis=axis(x, dim)).astype(out) if x.ndim else work.astype(out)


@op(aten.cumsum.default)
def cumsum(x: Array, dim: int, *, dtype: torch.dtype | None = None) -> Array:
    """Running sum along `dim`."""
    return _scan(jnp.cumsum, x, dim, dtype)


@op(aten.cumprod.default)
def cumprod(x: Array, dim: int, *, dtype: torch.dtype | None = None) -> Array:
    """Running product along `dim`."""
    return _scan(jnp.cumprod, x, dim, dtype)


@op(aten.logcumsumexp.default)
def logcumsumexp(x: Array, dim: int) -> Array:
    """Running log-sum-exp along `dim`."""
    if not x.ndim:
        return x
    return lax.cumlogsumexp(x.astype(opmath(x.dtype)), axis=axis(x, dim)).astype(x.dtype)


def _cumulative_extreme(x: Array, dim: int, later_wins: Any) -> tuple[Array, Array]:
    """Running max or min and the index where it was last reached; once a NaN is seen it stays."""
    if not x.ndim:
        return x, jnp.zeros((), index_dtype())
    ax = axis(x, dim)
    index = lax.broadcasted_iota(index_dtype(), x.shape, ax)

    def combine(a: tuple[Array, Array], b: tuple[Array, Array]) -> tuple[Array, Array]:
        take_b = ~jnp.isnan(a[0]) & (jnp.isnan(b[0]) | later_wins(b[0], a[0])) if not is_exact(x.dtype) \
            else later_wins(b[0], a[0])
        return jnp.where(take_b, b[0], a[0]), jnp.where(take_b, b[1], a[1])

    return lax.associative_scan(combine, (x, index), axis=ax)


@op(aten.cummax.default)
def cummax(x: Array, dim: int) -> tuple[Array, Array]:
    """Running maximum along `dim` and the (last) index where it was reached."""
    return _cumulative_extreme(x, dim, jnp.greater_equal)


@op(aten.cummin.default)
def cummin(x: Array, dim: int) -> tuple[Array, Array]:
    """Running minimum along `dim` and the (last) index where it was reached."""
    return _cumulative_extreme(x, dim, jnp.less_equal)


def sort_indices(x: Array, dim: int, descending: bool) -> Array:
    """Stable sort order along `dim` (NaN sorts as the largest value, as in torch)."""
    return jnp.argsort(x, axis=axis(x, dim), stable=True, descending=descending).astype(index_dtype())


@op(aten.sort.default)
def sort(x: Array, dim: int = -1, descending: bool = False) -> tuple[Array, Array]:
    """Values sorted along `dim` and their original indices (stable)."""
    if not x.ndim:
        return x, jnp.zeros((), index_dtype())
    order = sort_indices(x, dim, descending)
    return jnp.take_along_axis(x, order, axis=axis(x, dim)), order


@op(aten.sort.stable)
def sort_stable(x: Array, *, stable: bool | None = None, dim: int = -1,
                descending: bool = False) -> tuple[Array, Array]:
    """sort with the keyword-only overload's arguments."""
    return sort(x, dim, descending)


@op(aten.topk.default)
def topk(x: Array, k: int, dim: int = -1, largest: bool = True, sorted: bool = True) -> tuple[Array, Array]:
    """The k largest (or smallest) along `dim`, in sorted order; ties keep the lower index first."""
    values, order = sort(x, dim, largest)
    if not x.ndim:
        return values, order
    ax = axis(x, dim)
    return lax.slice_in_dim(values, 0, k, axis=ax), lax.slice_in_dim(order, 0, k, axis=ax)


@op(aten.kthvalue.default)
def kthvalue(x: Array, k: int, dim: int = -1, keepdim: bool = False) -> tuple[Array, Array]:
    """The k-th smallest value along `dim` and its index."""
    values, order = sort(x, dim, False)
    if not x.ndim:
        return values, order
    ax = axis(x, dim)
    return lax.index_in_dim(values, k - 1, ax, keepdim), lax.index_in_dim(order, k - 1, ax, keepdim)


def _median(x: Array, dim: int, keepdim: bool, ignore_nan: bool) -> tuple[Array, Array]:
    """The lower median along `dim` and its index; a NaN wins unless `ignore_nan` (all-NaN then gives NaN)."""
    if not x.ndim:
        return x, jnp.zeros((), index_dtype())
    ax = axis(x, dim)
    n = x.shape[ax]
    values, order = sort(x, ax, False)  # NaNs sort last, in their original order
    valid = jnp.sum(~jnp.isnan(x), axis=ax, keepdims=True) if not is_exact(x.dtype) else \
        jnp.full(x.shape[:ax] + (1,) + x.shape[ax + 1:], n, index_dtype())
    k = jnp.maximum(valid - 1, 0) // 2 if ignore_nan else jnp.where(valid < n, valid, (n - 1) // 2)
    k = k.astype(index_dtype())
    picked = jnp.take_along_axis(values, k, axis=ax), jnp.take_along_axis(order, k, axis=ax)
    return picked if keepdim else (jnp.squeeze(picked[0], ax), jnp.squeeze(picked[1], ax))


@op(aten.median.dim)
def median_dim(x: Array, dim: int, keepdim: bool = False) -> tuple[Array, Array]:
    """Lower median along `dim` and its index; NaN wins."""
    return _median(x, dim, keepdim, ignore_nan=False)


@op(aten.nanmedian.dim)
def nanmedian_dim(x: Array, dim: int, keepdim: bool = False) -> tuple[Array, Array]:
    """Lower median of the non-NaN values along `dim` and its index."""
    return _median(x, dim, keepdim, ignore_nan=True)


@op(aten.median.default)
def median(x: Array) -> Array:
    """Lower median of all elements; NaN wins."""
    return _median(x.reshape(-1), 0, False, ignore_nan=False)[0]


@op(aten.nanmedian.default)
def nanmedian(x: Array) -> Array:
    """Lower median of all non-NaN elements."""
    return _median(x.reshape(-1), 0, False, ignore_nan=True)[0]


@op(aten.histc.default)
def histc(x: Array, bins: int = 100, min: float = 0, max: float = 0) -> Array:  # noqa: A002  (the schema's names)
    """Counts of x's elements in `bins` equal bins over [min, max] (x's own range when min == max, widened by 1
    each way when that is empty); elements outside it and NaN are not counted, max counts in the last bin. An
    element's bin is trunc((x - min) * bins / (max - min)), each step rounded to x's dtype, as torch's CPU kernel
    finds it (MoE routing counts tokens per expert this way); counts accumulate in float32."""
    flat = x.reshape(-1)
    compute = float_of(x.dtype)
    if flat.size == 0:
        return jnp.zeros((bins,), compute)
    flat = flat.astype(compute)
    if min == max:
        lo, hi = jnp.min(flat), jnp.max(flat)
        empty = lo == hi
        lo, hi = jnp.where(empty, lo - 1, lo), jnp.where(empty, hi + 1, hi)
    else:
        # the edges as torch keeps them: min and max in x's dtype
        lo, hi = jnp.asarray(min, compute), jnp.asarray(max, compute)
    inside = (flat >= lo) & (flat <= hi)
    scaled = (flat - lo) * jnp.asarray(bins, compute) / (hi - lo)
    pos = jnp.minimum(jnp.where(inside, scaled, 0).astype(jnp.int32), bins - 1)
    pos = jnp.where(inside, pos, bins)  # past the end: dropped
    counts = jnp.zeros((bins,), opmath(compute)).at[pos].add(jnp.ones(flat.shape, opmath(compute)), mode="drop")
    return counts.astype(compute)


def _bincount_length(node: Any) -> str | None:
    return ("data-dependent output shape: bincount's length is max(input) + 1, known only at run time, and JAX "
            "needs static shapes; count with torch.nn.functional.one_hot(x, n).sum(0) or "
            "torch.histc(x.float(), bins=n, min=0, max=n - 1)")


@op(aten.bincount.default, refuse=_bincount_length)
def bincount(x: Array, weights: Array | None = None, minlength: int = 0) -> Array:
    """Refused when lowering (see `_bincount_length`): its output length depends on the input's values."""
    raise AssertionError("refused before it runs")

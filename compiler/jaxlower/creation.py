"""Tensor factories (arange, full, zeros, scalar_tensor, ...), with torch's dtype inference from the fill value.

`empty` and its kin hold unspecified values in torch; here they are zeros. Random factories are not lowered:
their values could never match torch's generator.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import torch
from jax import lax
from torch.ops import aten

from crossgraph.compiler.jaxlower.dtypes import FLOAT, cast, scalar_dtype, to_jax
from crossgraph.compiler.jaxlower.registry import op
from crossgraph.compiler.jaxlower.symbolic import Size, is_static

Array = jax.Array


def _dtype(dtype: torch.dtype | None, default: Any) -> np.dtype:
    return to_jax(dtype) if dtype is not None else np.dtype(default)


def filled(size: Sequence[Size], value: Any, dtype: Any) -> Array:
    """An array of shape `size` and `dtype` holding `value` everywhere."""
    return jnp.broadcast_to(cast(value, dtype), tuple(size))


@op(aten.arange.start_step)
def arange_start_step(start: Any, end: Any, step: Any = 1, *, dtype: torch.dtype | None = None) -> Array:
    """start, start + step, ... up to (not including) end; int64 when every bound is an integer, else float32."""
    integral = all(isinstance(v, int) or not is_static(v) for v in (start, end, step))
    out = _dtype(dtype, scalar_dtype(0) if integral else FLOAT)
    if integral:
        count = (end - start + step - 1) // step if step > 0 else (start - end - step - 1) // -step
    else:
        count = math.ceil((end - start) / step)
    count = count if not is_static(count) else max(count, 0)
    if integral and jnp.issubdtype(out, jnp.integer):
        return cast(start, out) + lax.iota(out, count) * step
    return (cast(start, FLOAT) + lax.iota(FLOAT, count) * step).astype(out)


@op(aten.full.default)
def full(size: Sequence[Size], fill_value: Any, *, dtype: torch.dtype | None = None) -> Array:
    """A tensor of `size` holding `fill_value`; the dtype follows the value (bool, int64, float32) if not given."""
    return filled(size, fill_value, _dtype(dtype, scalar_dtype(fill_value)))


@op(aten.full_like.default)
def full_like(x: Array, fill_value: Any, *, dtype: torch.dtype | None = None) -> Array:
    """A tensor shaped like x holding `fill_value`, in x's dtype unless `dtype` is given."""
    return filled(x.shape, fill_value, _dtype(dtype, x.dtype))


@op(aten.scalar_tensor.default)
def scalar_tensor(value: Any, *, dtype: torch.dtype | None = None) -> Array:
    """A 0-d tensor holding `value` (float32 unless `dtype` is given, as in torch)."""
    return cast(value, _dtype(dtype, FLOAT))


@op(aten.zeros.default, aten.empty.memory_format)
def zeros(size: Sequence[Size], *, dtype: torch.dtype | None = None) -> Array:
    """Zeros of `size` (also `empty`, whose contents torch leaves unspecified)."""
    return filled(size, 0, _dtype(dtype, FLOAT))


@op(aten.ones.default)
def ones(size: Sequence[Size], *, dtype: torch.dtype | None = None) -> Array:
    """Ones of `size`."""
    return filled(size, 1, _dtype(dtype, FLOAT))


@op(aten.empty_strided.default)
def empty_strided(size: Sequence[Size], stride: Sequence[int], *, dtype: torch.dtype | None = None) -> Array:
    """Zeros of `size` (strides mean nothing to JAX; torch leaves the contents unspecified)."""
    return zeros(size, dtype=dtype)


@op(aten.empty_permuted.default)
def empty_permuted(size: Sequence[Size], physical_layout: Sequence[int], *,
                   dtype: torch.dtype | None = None) -> Array:
    """Zeros of `size` (the physical layout means nothing to JAX)."""
    return zeros(size, dtype=dtype)


@op(aten.zeros_like.default, aten.empty_like.default)
def zeros_like(x: Array, *, dtype: torch.dtype | None = None) -> Array:
    """Zeros shaped like x (also `empty_like`)."""
    return full_like(x, 0, dtype=dtype)


@op(aten.ones_like.default)
def ones_like(x: Array, *, dtype: torch.dtype | None = None) -> Array:
    """Ones shaped like x."""
    return full_like(x, 1, dtype=dtype)


@op(aten.new_zeros.default, aten.new_empty.default)
def new_zeros(x: Array, size: Sequence[Size], *, dtype: torch.dtype | None = None) -> Array:
    """Zeros of `size` in x's dtype unless `dtype` is given (also `new_empty`)."""
    return filled(size, 0, _dtype(dtype, x.dtype))


@op(aten.new_ones.default)
def new_ones(x: Array, size: Sequence[Size], *, dtype: torch.dtype | None = None) -> Array:
    """Ones of `size` in x's dtype unless `dtype` is given."""
    return filled(size, 1, _dtype(dtype, x.dtype))


@op(aten.new_full.default)
def new_full(x: Array, size: Sequence[Size], fill_value: Any, *, dtype: torch.dtype | None = None) -> Array:
    """`fill_value` in a tensor of `size`, in x's dtype unless `dtype` is given."""
    return filled(size, fill_value, _dtype(dtype, x.dtype))


@op(aten.new_empty_strided.default)
def new_empty_strided(x: Array, size: Sequence[Size], stride: Sequence[int], *,
                      dtype: torch.dtype | None = None) -> Array:
    """Zeros of `size` in x's dtype unless `dtype` is given."""
    return new_zeros(x, size, dtype=dtype)


@op(aten.fill.Scalar)
def fill(x: Array, value: Any) -> Array:
    """x's shape and dtype, every element `value`."""
    return filled(x.shape, value, x.dtype)


def _triangle_indices(row: int, col: int, offset: int, upper: bool, dtype: torch.dtype | None) -> Array:
    rows, cols = (np.triu_indices if upper else np.tril_indices)(row, offset, col)
    return jnp.asarray(np.stack([rows, cols]), _dtype(dtype, scalar_dtype(0)))


@op(aten.tril_indices.default)
def tril_indices(row: int, col: int, offset: int = 0, *, dtype: torch.dtype | None = None) -> Array:
    """Row and column indices [2, n] of the lower triangle of a row x col matrix."""
    return _triangle_indices(row, col, offset, False, dtype)


@op(aten.triu_indices.default)
def triu_indices(row: int, col: int, offset: int = 0, *, dtype: torch.dtype | None = None) -> Array:
    """Row and column indices [2, n] of the upper triangle of a row x col matrix."""
    return _triangle_indices(row, col, offset, True, dtype)

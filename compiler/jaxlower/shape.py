"""Views and layout ops (reshape, permute, expand, slice, cat, split, pad, ...): JAX arrays have no strides, so each
view is a copy with the viewed shape; sizes may be symbolic."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import torch
from jax import lax
from torch.ops import aten

from crossgraph.compiler.jaxlower.dtypes import cast, promote, to_jax
from crossgraph.compiler.jaxlower.reductions import axis
from crossgraph.compiler.jaxlower.registry import op
from crossgraph.compiler.jaxlower.symbolic import Size, clamp_position, is_static, size_max, wrap_index

Array = jax.Array


@op(aten.view.default, aten._unsafe_view.default, aten.view_copy.default)
def view(x: Array, size: Sequence[Size]) -> Array:
    """x with the given shape (-1 inferred); also _unsafe_view and view_copy."""
    return jnp.reshape(x, tuple(size))


@op(aten.permute.default, aten.permute_copy.default)
def permute(x: Array, dims: Sequence[int]) -> Array:
    """x with its dims reordered."""
    return jnp.transpose(x, [axis(x, d) for d in dims])


@op(aten.transpose.int)
def transpose(x: Array, dim0: int, dim1: int) -> Array:
    """x with two dims swapped."""
    return jnp.swapaxes(x, axis(x, dim0), axis(x, dim1)) if x.ndim else x


@op(aten.t.default)
def t(x: Array) -> Array:
    """The transpose of a matrix (vectors and scalars unchanged)."""
    return x.T


@op(aten.expand.default, aten.expand_copy.default)
def expand(x: Array, size: Sequence[Size], *, implicit: bool = False) -> Array:
    """Broadcast to `size`; -1 keeps the existing size, extra leading sizes add dimensions."""
    lead = len(size) - x.ndim
    shape = tuple(x.shape[i - lead] if is_static(s) and s == -1 else s for i, s in enumerate(size))
    return jnp.broadcast_to(x, shape)


@op(aten.unsqueeze.default)
def unsqueeze(x: Array, dim: int) -> Array:
    """x with a size-1 dim inserted at `dim`."""
    return jnp.expand_dims(x, dim % (x.ndim + 1))


def _squeezable(x: Array, dims: Sequence[int]) -> tuple[int, ...]:
    return tuple(d for d in dict.fromkeys(axis(x, d) for d in dims) if x.ndim and is_static(x.shape[d])
                 and x.shape[d] == 1)


@op(aten.squeeze.default)
def squeeze(x: Array) -> Array:
    """x without its size-1 dims."""
    return jnp.squeeze(x, _squeezable(x, range(x.ndim)))


@op(aten.squeeze.dim, aten.squeeze.dims)
def squeeze_dims(x: Array, dim: int | Sequence[int]) -> Array:
    """x without the listed dims that have size 1."""
    return jnp.squeeze(x, _squeezable(x, [dim] if isinstance(dim, int) else dim))


@op(aten.select.int)
def select(x: Array, dim: int, index: Size) -> Array:
    """x[..., index, ...] at `dim`, the dim removed."""
    ax = axis(x, dim)
    index = wrap_index(index, x.shape[ax])
    if is_static(index):
        return lax.index_in_dim(x, index, ax, keepdims=False)
    return lax.dynamic_index_in_dim(x, jnp.asarray(index), ax, keepdims=False)


@op(aten.slice.Tensor)
def slice_(x: Array, dim: int = 0, start: Size | None = None, end: Size | None = None, step: int = 1) -> Array:
    """x[start:end:step] along `dim`, bounds clamped as torch does."""
    ax = axis(x, dim)
    size = x.shape[ax]
    lo = clamp_position(start, size, 0)
    hi = size_max(clamp_position(end, size, size), lo)
    return lax.slice_in_dim(x, lo, hi, step, ax)


@op(aten.narrow_copy.default)
def narrow(x: Array, dim: int, start: Size, length: Size) -> Array:
    """`length` elements from `start` along `dim`."""
    ax = axis(x, dim)
    start = wrap_index(start, x.shape[ax])
    return lax.slice_in_dim(x, start, start + length, 1, ax)


@op(aten.cat.default)
def cat(tensors: Sequence[Array], dim: int = 0) -> Array:
    """Concatenate, promoting dtypes; 1-d empty tensors are skipped (torch's legacy rule)."""
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = promote(dtype, t.dtype)
    kept = [t for t in tensors if not (t.ndim == 1 and is_static(t.shape[0]) and t.shape[0] == 0)]
    if not kept:
        return jnp.zeros((0,), dtype)
    return jnp.concatenate([cast(t, dtype) for t in kept], axis=axis(kept[0], dim))


@op(aten.split_with_sizes.default, aten.split_with_sizes_copy.default)
def split_with_sizes(x: Array, split_sizes: Sequence[Size], dim: int = 0) -> list[Array]:
    """Consecutive pieces of the given sizes along `dim`."""
    ax = axis(x, dim)
    pieces, start = [], 0
    for size in split_sizes:
        pieces.append(lax.slice_in_dim(x, start, start + size, 1, ax))
        start = start + size
    return pieces


@op(aten.split.Tensor)
def split(x: Array, split_size: int, dim: int = 0) -> list[Array]:
    """Consecutive pieces of `split_size` along `dim` (the last may be shorter)."""
    total = x.shape[axis(x, dim)]
    count = max(1, -(-total // split_size))
    return split_with_sizes(x, [min(split_size, total - i * split_size) for i in range(count)], dim)


@op(aten.unbind.int, aten.unbind_copy.int)
def unbind(x: Array, dim: int = 0) -> list[Array]:
    """Every slice along `dim`, the dim removed."""
    ax = axis(x, dim)
    return [lax.index_in_dim(x, i, ax, keepdims=False) for i in range(x.shape[ax])]


@op(aten.clone.default, aten.alias.default, aten.lift_fresh_copy.default)
def identity(x: Array, *, memory_format: Any = None) -> Array:
    """x itself: clone, alias and lift_fresh_copy copy what JAX never aliases."""
    return x


@op(aten._to_copy.default)
def to_copy(x: Array, *, dtype: torch.dtype | None = None) -> Array:
    """x cast to `dtype` (placement arguments mean nothing to JAX)."""
    return x if dtype is None else cast(x, to_jax(dtype))


@op(aten.copy.default)
def copy(x: Array, src: Array, non_blocking: bool = False) -> Array:
    """A tensor of x's shape and dtype holding `src` (broadcast)."""
    return jnp.broadcast_to(cast(src, x.dtype), x.shape)


@op(aten.flip.default)
def flip(x: Array, dims: Sequence[int]) -> Array:
    """x reversed along `dims`."""
    return jnp.flip(x, tuple(axis(x, d) for d in dims)) if x.ndim else x


@op(aten.roll.default)
def roll(x: Array, shifts: Sequence[int], dims: Sequence[int] = ()) -> Array:
    """x rotated by `shifts` along `dims` (over the flattened tensor when dims is empty)."""
    if not dims:
        return jnp.roll(x.reshape(-1), shifts[0]).reshape(x.shape)
    return jnp.roll(x, tuple(shifts), tuple(axis(x, d) for d in dims))


@op(aten.repeat.default)
def repeat(x: Array, repeats: Sequence[Size]) -> Array:
    """x tiled `repeats` times per dim (extra leading repeats add dims)."""
    lead = len(repeats) - x.ndim
    return jnp.tile(x.reshape((1,) * lead + x.shape), tuple(repeats))


@op(aten.diagonal.default, aten.diagonal_copy.default)
def diagonal(x: Array, offset: int = 0, dim1: int = 0, dim2: int = 1) -> Array:
    """The diagonal of dims (dim1, dim2) at `offset`, as the last dim."""
    return jnp.diagonal(x, offset, axis(x, dim1), axis(x, dim2))


def strided_positions(size: Sequence[Size], stride: Sequence[int], offset: int) -> Array:
    """Flat positions of an as_strided view: offset + sum(index_k * stride_k), shaped `size`."""
    positions = jnp.full(tuple(size), offset, jnp.int32)
    for k, s in enumerate(stride):
        positions = positions + lax.broadcasted_iota(jnp.int32, tuple(size), k) * s
    return positions


@op(aten.as_strided.default, aten.as_strided_copy.default)
def as_strided(x: Array, size: Sequence[Size], stride: Sequence[int], storage_offset: int | None = None) -> Array:
    """A strided view of x's elements in row-major order (x stands for its own contiguous storage)."""
    return jnp.take(x.reshape(-1), strided_positions(size, stride, storage_offset or 0))


@op(aten.unfold.default)
def unfold(x: Array, dimension: int, size: int, step: int) -> Array:
    """Windows of `size` every `step` along `dimension`; the window becomes the last dimension."""
    if not x.ndim:
        return x.reshape(1)
    ax = axis(x, dimension)
    count = (x.shape[ax] - size) // step + 1
    index = jnp.arange(count)[:, None] * step + jnp.arange(size)[None, :]
    windows = jnp.take(x, index, axis=ax)
    return jnp.moveaxis(windows, ax + 1, -1)


@op(aten.constant_pad_nd.default)
def constant_pad_nd(x: Array, pad: Sequence[int], value: Any = 0) -> Array:
    """Pad (or crop, for negative amounts) the last len(pad)/2 dims; `pad` lists (before, after) from the last dim."""
    config = [(0, 0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        config[x.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1], 0)
    return lax.pad(x, jnp.asarray(value, x.dtype), config)


def _pad_mode(reflect: bool, spatial: int) -> Any:
    """Reflection or replication padding of the last `spatial` dims, as a gather: output position i reads input
    position i - before, reflected or clamped into range (so negative amounts crop, as in torch)."""
    def lower(x: Array, padding: Sequence[int]) -> Array:
        for i in range(spatial):
            ax, before, after = x.ndim - 1 - i, padding[2 * i], padding[2 * i + 1]
            last = x.shape[ax] - 1
            source = jnp.arange(x.shape[ax] + before + after) - before
            source = last - jnp.abs(last - jnp.abs(source)) if reflect else jnp.clip(source, 0, last)
            x = jnp.take(x, source, axis=ax)
        return x
    lower.__name__ = f"{'reflection' if reflect else 'replication'}_pad{spatial}d"
    return lower


for _n in (1, 2, 3):
    op(getattr(aten, f"reflection_pad{_n}d").default)(_pad_mode(True, _n))
    op(getattr(aten, f"replication_pad{_n}d").default)(_pad_mode(False, _n))


@op(aten.view_as_complex.default)
def view_as_complex(x: Array) -> Array:
    """Real pairs in the last dim as a complex tensor."""
    return lax.complex(x[..., 0], x[..., 1])


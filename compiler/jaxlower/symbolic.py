"""Sizes that may be symbolic (jax.export shape polymorphism): the Python operators FX graphs apply to them, the
`sym_*` ATen ops that read them, and the no-op assertions torch.export leaves in graphs.

A size is a Python int or a JAX symbolic dimension; comparisons JAX cannot decide for every value of a symbol
fall back to symbolic max/min, so a graph traced with dynamic shapes stays polymorphic here.
"""

from __future__ import annotations

import math
import operator
from typing import Any

import jax
import torch
from jax import export
from torch.ops import aten

from crossgraph.compiler.jaxlower.registry import op

Size = Any
"""An int or a JAX symbolic dimension."""


def is_static(size: Size) -> bool:
    """True for a plain int."""
    return not export.is_symbolic_dim(size)


def size_max(a: Size, b: Size) -> Size:
    """max(a, b), symbolic when JAX cannot decide it for every value of the symbols."""
    try:
        return a if a >= b else b
    except jax.errors.InconclusiveDimensionOperation:
        return jax.core.max_dim(a, b)


def size_min(a: Size, b: Size) -> Size:
    """min(a, b), symbolic when JAX cannot decide it for every value of the symbols."""
    try:
        return a if a <= b else b
    except jax.errors.InconclusiveDimensionOperation:
        return jax.core.min_dim(a, b)


def wrap_index(index: Size, size: Size) -> Size:
    """A possibly negative position (Python style) as a position from the start."""
    return index + size if is_static(index) and index < 0 else index


def clamp_position(pos: Size | None, size: Size, default: Size) -> Size:
    """A slice bound as torch reads it: None is `default`, negatives count from the end, the result is in [0, size]."""
    if pos is None:
        return default
    if is_static(pos) and is_static(size):
        return min(max(pos + size if pos < 0 else pos, 0), size)
    if is_static(pos) and pos >= 1 << 62:  # torch's "to the end" sentinel (sys.maxsize)
        return size
    return size_max(size_min(wrap_index(pos, size), size), 0)


for _fn in (operator.add, operator.sub, operator.mul, operator.floordiv, operator.mod, operator.truediv,
            operator.pow, operator.neg, operator.pos, operator.abs, operator.eq, operator.ne, operator.lt,
            operator.le, operator.gt, operator.ge, operator.and_, operator.or_, operator.not_):
    op(_fn)(_fn)


@op(operator.getitem)
def getitem(values: Any, index: int) -> Any:
    """One output of a multi-output op (or one element of a list)."""
    return values[index]


@op(torch.sym_max)
def sym_max(a: Size, b: Size) -> Size:
    """max of two sizes."""
    return size_max(a, b)


@op(torch.sym_min)
def sym_min(a: Size, b: Size) -> Size:
    """min of two sizes."""
    return size_min(a, b)


@op(torch.sym_not)
def sym_not(a: Any) -> bool:
    """Logical not of a symbolic bool."""
    return not a


@op(torch.sym_float)
def sym_float(a: Any) -> float:
    """A size as a float."""
    return float(a)


@op(torch.sym_int, math.floor, math.trunc)
def sym_int(a: Any) -> int:
    """A number as an int (truncated)."""
    return int(a)


@op(math.ceil)
def ceil(a: Any) -> int:
    """A number rounded up to an int."""
    return math.ceil(a)


@op(torch.sym_sqrt)
def sym_sqrt(a: Any) -> float:
    """The square root of a size."""
    return math.sqrt(a)


@op(aten.sym_size.int)
def sym_size(x: jax.Array, dim: int) -> Size:
    """x's size at `dim` (symbolic when the dim is)."""
    return x.shape[dim]


@op(aten.sym_numel.default)
def sym_numel(x: jax.Array) -> Size:
    """x's number of elements."""
    return math.prod(x.shape)


@op(aten.sym_stride.int)
def sym_stride(x: jax.Array, dim: int) -> Size:
    """The stride of a contiguous tensor of x's shape (JAX arrays have no other layout)."""
    return math.prod(x.shape[dim % x.ndim + 1:])


@op(aten.sym_storage_offset.default)
def sym_storage_offset(x: jax.Array) -> int:
    """0: a JAX array is its own storage."""
    return 0


@op(aten._assert_tensor_metadata.default, aten._assert_scalar.default, aten.sym_constrain_range.default,
    aten.sym_constrain_range_for_size.default, aten._assert_async.msg, aten._assert_async.default)
def assertion(*args: Any, **kwargs: Any) -> None:
    """Checks torch.export already proved for every allowed shape; value checks cannot run inside jax.jit."""
    return None

"""torch dtypes as JAX dtypes under crossgraph's width policy, and torch's type promotion over JAX values.

Width policy (the same as `crossgraph.models.convert`): `jax_enable_x64` stays off, so int64 is computed as int32
and uint64 as uint32; a graph that computes in float64 or complex128 is refused with NeedsX64Error. With x64 on,
every dtype keeps its width.

Promotion follows torch, not JAX: tensors with dimensions outrank zero-dimensional tensors, which outrank Python
scalars, and a lower rank only matters when it brings a higher category (bool < integer < float < complex).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import torch
from jax import export

from crossgraph.graphs import InputError


class NeedsX64Error(InputError):
    """A graph computes in float64 or complex128, which JAX only has with jax_enable_x64 (crossgraph leaves it off)."""


_TORCH_TO_NUMPY: dict[torch.dtype, Any] = {
    torch.bool: np.bool_, torch.uint8: np.uint8, torch.int8: np.int8, torch.int16: np.int16,
    torch.int32: np.int32, torch.int64: np.int64, torch.uint16: np.uint16, torch.uint32: np.uint32,
    torch.uint64: np.uint64, torch.float16: np.float16, torch.bfloat16: ml_dtypes.bfloat16,
    torch.float32: np.float32, torch.float64: np.float64, torch.complex64: np.complex64,
    torch.complex128: np.complex128,
}
_NARROWED = {np.dtype(np.int64): np.dtype(np.int32), np.dtype(np.uint64): np.dtype(np.uint32)}
_NEEDS_X64 = (np.dtype(np.float64), np.dtype(np.complex128))

FLOAT = np.dtype(np.float32)
"""torch's default floating dtype, which Python floats and integer-to-float ops produce."""


def x64() -> bool:
    """Whether JAX computes in 64 bits (jax_enable_x64)."""
    return bool(jax.config.read("jax_enable_x64"))


def to_jax(dtype: torch.dtype) -> np.dtype:
    """The JAX dtype that holds values of the torch `dtype` under the width policy."""
    if dtype not in _TORCH_TO_NUMPY:
        raise InputError(f"torch dtype {dtype} has no JAX counterpart")
    return canonical(np.dtype(_TORCH_TO_NUMPY[dtype]))


def canonical(dtype: Any) -> np.dtype:
    """`dtype` narrowed as the width policy says (int64 -> int32); float64 without x64 raises NeedsX64Error."""
    dtype = np.dtype(dtype)
    if x64():
        return dtype
    if dtype in _NEEDS_X64:
        raise NeedsX64Error(f"{dtype} needs jax_enable_x64, which crossgraph leaves off; compute in float32")
    return _NARROWED.get(dtype, dtype)


def needs_x64(dtype: torch.dtype) -> bool:
    """Whether values of the torch `dtype` cannot be held without jax_enable_x64."""
    return not x64() and dtype in (torch.float64, torch.complex128)


def category(dtype: Any) -> int:
    """0 bool, 1 integer, 2 floating, 3 complex: torch's promotion categories."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return 0
    if jnp.issubdtype(dtype, jnp.integer):
        return 1
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return 3
    return 2


def is_exact(dtype: Any) -> bool:
    """Bool or integer dtype."""
    return category(dtype) < 2


def is_scalar(value: Any) -> bool:
    """A Python number or a symbolic size, as opposed to an array."""
    return isinstance(value, (bool, int, float, complex)) or export.is_symbolic_dim(value)


def scalar_dtype(value: Any) -> np.dtype:
    """The dtype torch gives a Python scalar: bool, int64 (narrowed), the default float, or complex64."""
    if isinstance(value, bool):
        return np.dtype(np.bool_)
    if isinstance(value, float):
        return FLOAT
    if isinstance(value, complex):
        return np.dtype(np.complex64)
    return to_jax(torch.int64)


def dtype_of(value: Any) -> np.dtype:
    """The dtype of an array, or the one torch gives a Python scalar."""
    return scalar_dtype(value) if is_scalar(value) else np.dtype(value.dtype)


def promote(a: Any, b: Any) -> np.dtype:
    """Two dtypes' common dtype (JAX's table agrees with torch's for the dtypes both have)."""
    return canonical(jnp.promote_types(a, b))


def _combine(higher: np.dtype | None, lower: np.dtype | None) -> np.dtype | None:
    """torch's combine_categories: the lower-priority group only counts when its category is higher."""
    if higher is None:
        return lower
    if lower is None or category(higher) >= 2 and category(higher) >= category(lower):
        return higher
    if category(lower) == 3:
        return promote(higher, np.complex64) if category(higher) == 2 else lower
    if category(higher) == 0 or category(lower) == 2:
        return promote(higher, lower)
    return higher


def result_type(*values: Any) -> np.dtype:
    """The dtype torch computes an elementwise op in, from its operands (arrays, Python scalars; None is skipped)."""
    groups: list[np.dtype | None] = [None, None, None]  # tensors with dims, zero-dim tensors, Python scalars
    for value in values:
        if value is None:
            continue
        rank = 2 if is_scalar(value) else (0 if value.ndim else 1)
        dtype = dtype_of(value)
        groups[rank] = dtype if groups[rank] is None else promote(groups[rank], dtype)
    out = _combine(groups[0], _combine(groups[1], groups[2]))
    if out is None:
        raise ValueError("result_type needs at least one operand")
    return out


def cast(value: Any, dtype: Any) -> jax.Array:
    """`value` (array, Python scalar or symbolic size) as an array of `dtype`."""
    if is_scalar(value):
        return jnp.asarray(value, dtype)
    return value if value.dtype == dtype else value.astype(dtype)


def opmath(dtype: Any) -> np.dtype:
    """The dtype torch's CPU kernels compute a `dtype` op in: float32 for float16 and bfloat16."""
    dtype = np.dtype(dtype)
    return FLOAT if dtype in (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)) else dtype


def float_of(dtype: Any) -> np.dtype:
    """`dtype` if floating or complex, else the default float (what sin, sqrt or true division of ints give)."""
    return np.dtype(dtype) if category(dtype) >= 2 else FLOAT

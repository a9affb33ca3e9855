"""Matrix products (mm, bmm, addmm, ...) and vector norms, at full float32 precision with float32 accumulation
for float16 and bfloat16 (as torch's CPU kernels; JAX's default precision may use TF32 or bf16 passes on GPUs)."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import torch
from jax import lax
from torch.ops import aten

from crossgraph.compiler.jaxlower.dtypes import is_exact, opmath, promote, to_jax
from crossgraph.compiler.jaxlower.reductions import axes
from crossgraph.compiler.jaxlower.registry import op

Array = jax.Array


def accumulated_product(a: Array, b: Array) -> tuple[Array, np.dtype]:
    """a @ b (numpy's matmul broadcasting) accumulated in the opmath dtype, unrounded, and the result dtype."""
    dtype = promote(a.dtype, b.dtype)
    out = jnp.matmul(a.astype(dtype), b.astype(dtype), precision=lax.Precision.HIGHEST,
                     preferred_element_type=opmath(dtype))
    return out, dtype


def product(a: Array, b: Array) -> Array:
    """a @ b in the promoted dtype, accumulated in its opmath dtype and rounded once."""
    out, dtype = accumulated_product(a, b)
    return out.astype(dtype)


def scaled_sum(base: Array | None, prod: Array, dtype: np.dtype, beta: Any, alpha: Any) -> Array:
    """beta * base + alpha * prod rounded once to `dtype`; beta == 0 ignores base (NaN and Inf included).

    Integer tensors take alpha and beta truncated to integers, as torch converts them to the tensors' dtype.
    """
    if is_exact(dtype):
        alpha, beta = int(alpha), int(beta)
    work = opmath(dtype)
    out = prod.astype(work) * alpha if alpha != 1 else prod.astype(work)
    if beta != 0 and base is not None:
        out = out + (base.astype(work) * beta if beta != 1 else base.astype(work))
    return jnp.broadcast_to(out, prod.shape).astype(dtype)


@op(aten.mm.default, aten.bmm.default, aten.mv.default, aten.dot.default)
def mm(a: Array, b: Array) -> Array:
    """Matrix, batched-matrix, matrix-vector and dot products."""
    return product(a, b)


@op(aten.addmm.default, aten.addmv.default, aten.baddbmm.default)
def addmm(base: Array, a: Array, b: Array, *, beta: Any = 1, alpha: Any = 1) -> Array:
    """beta * base + alpha * (a @ b) for mm, mv and bmm, rounded once."""
    prod, dtype = accumulated_product(a, b)
    return scaled_sum(base, prod, dtype, beta, alpha)


@op(aten.addbmm.default)
def addbmm(base: Array, a: Array, b: Array, *, beta: Any = 1, alpha: Any = 1) -> Array:
    """beta * base + alpha * sum_i a[i] @ b[i], accumulated one batch at a time and rounded after each (as torch's
    CPU kernel, so float16 and bfloat16 round where torch rounds)."""
    products, dtype = accumulated_product(a, b)
    out = scaled_sum(base, jnp.zeros(products.shape[1:], products.dtype), dtype, beta, 1)
    for i in range(products.shape[0]):
        out = scaled_sum(out, products[i], dtype, 1, alpha)
    return out


@op(aten.linalg_vector_norm.default)
def vector_norm(x: Array, ord: float = 2, dim: Sequence[int] | None = None, keepdim: bool = False, *,
                dtype: torch.dtype | None = None) -> Array:
    """The `ord`-norm over `dim`: max/min |x| for +-inf, the count of nonzeros for 0, (sum |x|^p)^(1/p) else."""
    if dtype is not None:
        x = x.astype(to_jax(dtype))
    out_dtype = jnp.real(jnp.zeros((), x.dtype)).dtype if not is_exact(x.dtype) else jnp.float32
    mag = jnp.abs(x).astype(opmath(out_dtype))
    dims = axes(x, dim)
    if ord == float("inf"):
        norm = jnp.max(mag, axis=dims, keepdims=keepdim)
    elif ord == float("-inf"):
        norm = jnp.min(mag, axis=dims, keepdims=keepdim)
    elif ord == 0:
        norm = jnp.sum((mag != 0).astype(mag.dtype), axis=dims, keepdims=keepdim)
    elif ord == 1:
        norm = jnp.sum(mag, axis=dims, keepdims=keepdim)
    elif ord == 2:
        norm = jnp.sqrt(jnp.sum(mag * mag, axis=dims, keepdims=keepdim))
    else:
        norm = jnp.sum(mag ** ord, axis=dims, keepdims=keepdim) ** (1.0 / ord)
    return norm.astype(out_dtype)

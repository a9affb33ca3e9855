"""Discrete Fourier transforms (_fft_r2c, _fft_c2r, _fft_c2c) over the given dims, with ATen's normalization codes:
0 none, 1 by 1/sqrt(n), 2 by 1/n (applied to whichever direction the op computes)."""

from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from torch.ops import aten

from crossgraph.compiler.jaxlower.reductions import axes
from crossgraph.compiler.jaxlower.registry import op

Array = jax.Array


def _scaled(x: Array, sizes: Sequence[int], normalization: int) -> Array:
    n = math.prod(sizes)
    scale = {0: 1.0, 1: 1 / math.sqrt(n), 2: 1 / n}[normalization]
    return x if scale == 1.0 else x * jnp.asarray(scale, x.real.dtype)


@op(aten._fft_r2c.default)
def fft_r2c(x: Array, dim: Sequence[int], normalization: int, onesided: bool) -> Array:
    """Forward transform of a real tensor; `onesided` keeps the last dim's first n // 2 + 1 frequencies."""
    dims = axes(x, dim)
    out = jnp.fft.rfftn(x, axes=dims) if onesided else jnp.fft.fftn(x.astype(jnp.complex64), axes=dims)
    return _scaled(out, [x.shape[d] for d in dims], normalization).astype(jnp.complex64)


@op(aten._fft_c2r.default)
def fft_c2r(x: Array, dim: Sequence[int], normalization: int, last_dim_size: int) -> Array:
    """Unnormalized inverse transform to a real tensor whose last transformed dim has `last_dim_size` points."""
    dims = axes(x, dim)
    sizes = [x.shape[d] for d in dims[:-1]] + [last_dim_size]
    out = jnp.fft.irfftn(x, s=sizes, axes=dims, norm="forward")
    return _scaled(out, sizes, normalization).astype(jnp.float32)


@op(aten._fft_c2c.default)
def fft_c2c(x: Array, dim: Sequence[int], normalization: int, forward: bool) -> Array:
    """Forward or unnormalized inverse complex transform."""
    dims = axes(x, dim)
    out = jnp.fft.fftn(x, axes=dims) if forward else jnp.fft.ifftn(x, axes=dims, norm="forward")
    return _scaled(out, [x.shape[d] for d in dims], normalization).astype(x.dtype)

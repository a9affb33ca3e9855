"""Elementwise arithmetic, math functions, comparisons and logic, with torch's type promotion and rounding rules.

float16 and bfloat16 are computed in float32 and rounded once, as torch's CPU kernels do.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import jax.scipy.special as jsp
import numpy as np
from jax import lax
from torch.ops import aten

from crossgraph.compiler.jaxlower.dtypes import cast, float_of, is_exact, is_scalar, opmath, result_type
from crossgraph.compiler.jaxlower.registry import op

Array = jax.Array


def pointwise(fn: Callable[..., Array], *values: Any, to_float: bool = False, upcast: bool = True) -> Array:
    """`fn` on `values` promoted as torch does; `to_float` makes integer results the default float.

    Boolean results (comparisons, predicates) are returned as they are.
    """
    dtype = result_type(*values)
    if to_float:
        dtype = float_of(dtype)
    work = opmath(dtype) if upcast else dtype
    out = fn(*(cast(v, work) for v in values))
    return out if out.dtype in (dtype, jnp.bool_) else out.astype(dtype)


def sign(x: Array) -> Array:
    """-1, 0 or 1; NaN gives 0 as in torch."""
    return jnp.where(jnp.isnan(x), jnp.zeros_like(x), jnp.sign(x))


def digamma(x: Array) -> Array:
    """psi(x), with torch's values at zero: -inf at +0 and +inf at -0 (JAX gives NaN)."""
    return jnp.where(x == 0, jnp.copysign(jnp.full_like(x, jnp.inf), -x), jsp.digamma(x))


def hurwitz_zeta(s: Array, q: Array) -> Array:
    """zeta(s, q) = sum_k (q + k)^-s, also for negative q (JAX's zeta is wrong there): negative q is shifted up
    by m = ceil(-q) with zeta(s, q) = zeta(s, q + m) + sum_{k < m} (q + k)^-s. As in torch: s = 1 and the poles
    (q a non-positive integer) give inf, s < 1 and a negative q with a non-integer s give NaN."""
    s, q = jnp.broadcast_arrays(s, q)
    shift = jnp.maximum(jnp.ceil(-q), 0)

    def more(carry: tuple[Array, Array]) -> Array:
        return jnp.any(carry[0] < shift)

    def add_term(carry: tuple[Array, Array]) -> tuple[Array, Array]:
        k, total = carry
        return k + 1, total + jnp.where(k < shift, (q + k) ** -s, 0)

    _, head = lax.while_loop(more, add_term, (jnp.zeros_like(q), jnp.zeros_like(q)))
    out = jsp.zeta(s, q + shift) + head
    out = jnp.where((q < 0) & (s != jnp.floor(s)), jnp.nan, out)
    out = jnp.where((q <= 0) & (q == jnp.floor(q)), jnp.inf, out)
    return jnp.where(s == 1, jnp.inf, jnp.where(s < 1, jnp.nan, out))


def _register(targets: dict[Any, Callable[..., Array]], **how: bool) -> None:
    """One translation per target: `fn` applied pointwise with `how` (see `pointwise`)."""
    for target, fn in targets.items():
        def lower(*values: Any, fn: Callable[..., Array] = fn) -> Array:
            return pointwise(fn, *values, **how)
        lower.__name__ = f"lower_{target.name().replace('::', '_')}"
        op(target)(lower)


_register({
    aten.acos.default: jnp.arccos, aten.acosh.default: jnp.arccosh, aten.asin.default: jnp.arcsin,
    aten.asinh.default: jnp.arcsinh, aten.atan.default: jnp.arctan, aten.atanh.default: jnp.arctanh,
    aten.cos.default: jnp.cos, aten.cosh.default: jnp.cosh, aten.sin.default: jnp.sin, aten.sinh.default: jnp.sinh,
    aten.tan.default: jnp.tan, aten.tanh.default: jnp.tanh, aten.exp.default: jnp.exp, aten.exp2.default: jnp.exp2,
    aten.expm1.default: jnp.expm1, aten.log.default: jnp.log, aten.log10.default: jnp.log10,
    aten.log1p.default: jnp.log1p, aten.log2.default: jnp.log2, aten.sqrt.default: jnp.sqrt,
    aten.rsqrt.default: lax.rsqrt, aten.reciprocal.default: jnp.reciprocal, aten.sigmoid.default: jax.nn.sigmoid,
    aten.erf.default: jsp.erf, aten.erfc.default: jsp.erfc, aten.erfinv.default: jsp.erfinv,
    aten.lgamma.default: jsp.gammaln, aten.digamma.default: digamma, aten.i0.default: jsp.i0,
    aten.special_i0e.default: jsp.i0e, aten.special_i1.default: jsp.i1, aten.special_i1e.default: jsp.i1e,
    aten.special_ndtri.default: jsp.ndtri,
    aten.atan2.default: jnp.arctan2, aten.copysign.Tensor: jnp.copysign,
    aten.hypot.default: jnp.hypot, aten.igamma.default: jsp.gammainc, aten.igammac.default: jsp.gammaincc,
    aten.special_zeta.default: hurwitz_zeta, aten.xlogy.Tensor: jsp.xlogy,
}, to_float=True)
_register({
    aten.abs.default: jnp.abs, aten.neg.default: jnp.negative, aten.sign.default: sign,
    aten.sgn.default: sign, aten.bitwise_not.default: jnp.invert,
    aten.mul.Tensor: jnp.multiply, aten.mul.Scalar: jnp.multiply,
    aten.maximum.default: jnp.maximum, aten.minimum.default: jnp.minimum,
    aten.fmax.default: jnp.fmax, aten.fmin.default: jnp.fmin,
    aten.remainder.Tensor: jnp.remainder, aten.remainder.Scalar: jnp.remainder,
    aten.fmod.Tensor: jnp.fmod, aten.fmod.Scalar: jnp.fmod,
    aten.bitwise_and.Tensor: jnp.bitwise_and, aten.bitwise_and.Scalar: jnp.bitwise_and,
    aten.bitwise_or.Tensor: jnp.bitwise_or, aten.bitwise_or.Scalar: jnp.bitwise_or,
    aten.bitwise_xor.Tensor: jnp.bitwise_xor, aten.bitwise_xor.Scalar: jnp.bitwise_xor,
    aten.bitwise_left_shift.Tensor: jnp.left_shift, aten.bitwise_right_shift.Tensor: jnp.right_shift,
    aten.gcd.default: jnp.gcd, aten.lcm.default: jnp.lcm,
    aten.eq.Tensor: jnp.equal, aten.eq.Scalar: jnp.equal, aten.ne.Tensor: jnp.not_equal,
    aten.ne.Scalar: jnp.not_equal, aten.lt.Tensor: jnp.less, aten.lt.Scalar: jnp.less,
    aten.le.Tensor: jnp.less_equal, aten.le.Scalar: jnp.less_equal, aten.gt.Tensor: jnp.greater,
    aten.gt.Scalar: jnp.greater, aten.ge.Tensor: jnp.greater_equal, aten.ge.Scalar: jnp.greater_equal,
    aten.isnan.default: jnp.isnan, aten.isinf.default: jnp.isinf,
    aten.signbit.default: jnp.signbit,
})
_register({aten.nextafter.default: jnp.nextafter}, upcast=False)


def _integral(fn: Callable[[Array], Array]) -> Callable[[Array], Array]:
    """Rounding to integral values; integer tensors come back unchanged, as in torch."""
    def lower(x: Array) -> Array:
        return x if is_exact(x.dtype) else pointwise(fn, x)
    return lower


for _target, _fn in {aten.ceil.default: jnp.ceil, aten.floor.default: jnp.floor, aten.round.default: jnp.round,
                     aten.trunc.default: jnp.trunc, aten.frac.default: lambda x: x - jnp.trunc(x)}.items():
    op(_target)(_integral(_fn))


@op(aten.round.decimals)
def round_decimals(x: Array, *, decimals: int = 0) -> Array:
    """Round half to even at `decimals` digits: scale by 10**decimals, round, scale back (torch's order)."""
    if decimals >= 0:
        return pointwise(lambda v: jnp.round(v * 10.0 ** decimals) / 10.0 ** decimals, x)
    return pointwise(lambda v: jnp.round(v / 10.0 ** -decimals) * 10.0 ** -decimals, x)


@op(aten.add.Tensor, aten.add.Scalar)
def add(x: Any, y: Any, *, alpha: Any = 1) -> Array:
    """x + alpha * y, promoted as torch promotes."""
    return pointwise(lambda a, b: a + b if alpha == 1 else a + b * alpha, x, y)


@op(aten.sub.Tensor, aten.sub.Scalar)
def sub(x: Any, y: Any, *, alpha: Any = 1) -> Array:
    """x - alpha * y, promoted as torch promotes."""
    return pointwise(lambda a, b: a - b if alpha == 1 else a - b * alpha, x, y)


@op(aten.rsub.Tensor)
def rsub(x: Any, y: Any, *, alpha: Any = 1) -> Array:
    """y - alpha * x."""
    return sub(y, x, alpha=alpha)


def _floor_divide_float(a: Array, b: Array) -> Array:
    """torch's floating floor division (via fmod, so that a == b * q + r holds as closely as possible)."""
    mod = jnp.fmod(a, b)
    div = (a - mod) / b
    div = jnp.where((mod != 0) & ((b < 0) != (mod < 0)), div - 1, div)
    floor = jnp.floor(div)
    floor = jnp.where(div - floor > 0.5, floor + 1, floor)
    floor = jnp.where(div == 0, jnp.copysign(jnp.zeros_like(div), a / b), floor)
    return jnp.where(b == 0, a / b, floor)


def _truncating_divide(a: Array, b: Array) -> Array:
    """Integer division rounded toward zero (C's rule, XLA's integer division)."""
    return lax.div(*jnp.broadcast_arrays(a, b))


def divide(x: Any, y: Any, rounding_mode: str | None) -> Array:
    """torch.div: true division (integers become floats), or rounded toward zero ("trunc") or down ("floor")."""
    if rounding_mode is None:
        return pointwise(jnp.true_divide, x, y, to_float=True)
    if is_exact(result_type(x, y)):
        return pointwise(_truncating_divide if rounding_mode == "trunc" else jnp.floor_divide, x, y)
    if rounding_mode == "trunc":
        return pointwise(lambda a, b: jnp.trunc(a / b), x, y)
    return pointwise(_floor_divide_float, x, y)


@op(aten.div.Tensor, aten.div.Scalar)
def div(x: Any, y: Any) -> Array:
    """True division: integers divide to the default float."""
    return divide(x, y, None)


@op(aten.div.Tensor_mode, aten.div.Scalar_mode)
def div_mode(x: Any, y: Any, *, rounding_mode: str | None = None) -> Array:
    """Division rounded as `rounding_mode` says (None, "trunc" or "floor")."""
    return divide(x, y, rounding_mode)


@op(aten.floor_divide.default)
def floor_divide(x: Any, y: Any) -> Array:
    """Division rounded down (Python's //)."""
    return divide(x, y, "floor")


def _power_by_scalar(x: Array, exponent: Any) -> Array:
    """x ** exponent for a Python exponent: exact repeated multiplication for integral exponents, sqrt for 1/2."""
    if float(exponent) == int(exponent) and abs(exponent) <= 1 << 16:
        return lax.integer_pow(x, int(exponent))
    if exponent == 0.5:
        return jnp.sqrt(x)
    if exponent == -0.5:
        return lax.rsqrt(x)
    return jnp.power(x, exponent)


@op(aten.pow.Tensor_Scalar)
def pow_tensor_scalar(x: Array, exponent: Any) -> Array:
    """x ** exponent for a Python exponent, integral exponents by exact multiplication."""
    dtype = result_type(x, exponent)
    out = _power_by_scalar(cast(x, opmath(dtype)), exponent)
    return out.astype(dtype)


def _power(x: Array, exponent: Array) -> Array:
    """jnp.power, with torch's integer powers for negative exponents: 1 ** -n = 1, (-1) ** -n = +-1 and 0 for
    every other base (JAX's integer power has no negative exponents and returns garbage, e.g. 7 ** -5 =
    -1901072361)."""
    if not jnp.issubdtype(x.dtype, jnp.integer):
        return jnp.power(x, exponent)
    out = jnp.power(x, jnp.maximum(exponent, 0))
    one = jnp.ones_like(out)
    negative = jnp.where(x == 1, one, jnp.where(x == -1, jnp.where(exponent % 2 == 0, one, -one), 0 * one))
    return jnp.where(exponent < 0, negative, out)


@op(aten.pow.Tensor_Tensor, aten.pow.Scalar)
def power(x: Any, exponent: Any) -> Array:
    """x ** exponent with a tensor exponent (or a Python base); integer powers as torch computes them."""
    return pointwise(_power, x, exponent)


@op(aten.clamp.default, aten.clamp.Tensor)
def clamp(x: Array, min: Any = None, max: Any = None) -> Array:
    """min(max(x, min), max): NaN in x stays NaN, and min > max gives max, as in torch."""
    def bounded(v: Array, *bounds: Array) -> Array:
        lo, hi = (bounds[0] if min is not None else None), (bounds[-1] if max is not None else None)
        if lo is not None:
            v = jnp.maximum(v, lo)
        return v if hi is None else jnp.minimum(v, hi)
    return pointwise(bounded, x, *(b for b in (min, max) if b is not None))


@op(aten.clamp_min.default, aten.clamp_min.Tensor)
def clamp_min(x: Array, min: Any) -> Array:
    """max(x, min)."""
    return clamp(x, min, None)


@op(aten.clamp_max.Tensor)
def clamp_max(x: Array, max: Any) -> Array:
    """min(x, max)."""
    return clamp(x, None, max)


def _logical(fn: Callable[..., Array]) -> Callable[..., Array]:
    def lower(*values: Array) -> Array:
        return fn(*(v.astype(jnp.bool_) if not is_scalar(v) else bool(v) for v in values))
    return lower


for _target, _fn in {aten.logical_and.default: jnp.logical_and, aten.logical_or.default: jnp.logical_or,
                     aten.logical_xor.default: jnp.logical_xor, aten.logical_not.default: jnp.logical_not}.items():
    op(_target)(_logical(_fn))


@op(aten.ldexp.Tensor)
def ldexp(x: Array, other: Array) -> Array:
    """x * 2 ** other, as a float."""
    return pointwise(lambda a, b: a * jnp.exp2(b), x, other, to_float=True)


@op(aten.polygamma.default)
def polygamma(n: int, x: Array) -> Array:
    """psi^(n)(x) = (-1)^(n+1) n! zeta(n + 1, x) for n >= 1 (torch's formula), digamma for n = 0."""
    if n == 0:
        return pointwise(digamma, x, to_float=True)
    factor = (-1) ** (n + 1) * math.factorial(n)
    return pointwise(lambda v: factor * hurwitz_zeta(jnp.asarray(n + 1, v.dtype), v), x, to_float=True)


@op(aten.frexp.Tensor)
def frexp(x: Array) -> tuple[Array, Array]:
    """Mantissa in [0.5, 1) and int32 exponent with x = mantissa * 2 ** exponent."""
    mantissa, exponent = jnp.frexp(x.astype(opmath(x.dtype)))
    return mantissa.astype(x.dtype), exponent.astype(np.int32)


@op(aten.angle.default)
def angle(x: Array) -> Array:
    """The argument of x: 0 or pi for reals (NaN stays NaN)."""
    return pointwise(lambda v: jnp.where(jnp.isnan(v), v, jnp.angle(v).astype(v.dtype)), x, to_float=True)


@op(aten._conj.default, aten._conj_physical.default)
def conj(x: Array) -> Array:
    """The complex conjugate; real tensors are returned as they are."""
    return jnp.conj(x) if jnp.iscomplexobj(x) else x

"""Elementwise op families: float and int arithmetic, guarded transcendental ops, comparisons, logic, where and
casts, each with its result interval and exactness (see generator.py for why those matter)."""

from __future__ import annotations

import math
from typing import Callable

from crossgraph.compiler.fuzz.builder import EXACT_SCALES, FLOAT_CONSTANTS, INT_CONSTANTS, Builder, Out, Var, \
    broadcast, exact_or_int, interval_mul, is_float, monotone, safe_nonzero, safe_positive
from crossgraph.compiler.fuzz.program import BOOL, FLOAT, INT


def _gelu(x: float) -> float:
    return 0.5 * x * (1 + math.erf(x / math.sqrt(2)))


UNARY_SMOOTH: dict[str, tuple[str, Callable[[Var], tuple[float, float]]]] = {
    "tanh": ("torch.tanh({})", monotone(math.tanh)),
    "sigmoid": ("torch.sigmoid({})", monotone(lambda x: 1 / (1 + math.exp(-x)))),
    "gelu": ("F.gelu({})", lambda v: (-0.17 if v.lo < 0 else _gelu(v.lo), max(v.hi, 0.0))),
    "gelu_tanh": ("F.gelu({}, approximate='tanh')", lambda v: (-0.17 if v.lo < 0 else _gelu(v.lo), max(v.hi, 0.0))),
    "silu": ("F.silu({})", lambda v: (-0.28 if v.lo < 0 else v.lo / (1 + math.exp(-v.lo)), max(v.hi, 0.0))),
    "elu": ("F.elu({})", lambda v: (math.expm1(min(v.lo, 0.0)), v.hi)),
    "leaky_relu": ("F.leaky_relu({}, 0.1)", monotone(lambda x: x if x > 0 else 0.1 * x)),
    "sin": ("torch.sin({})", lambda v: (-1.0, 1.0)),
    "cos": ("torch.cos({})", lambda v: (-1.0, 1.0)),
    "erf": ("torch.erf({})", monotone(math.erf)),
    "square": ("torch.square({})", lambda v: (0.0, v.bound ** 2)),
    "softplus": ("F.softplus({})", monotone(lambda x: math.log1p(math.exp(x)))),
    "logsigmoid": ("F.logsigmoid({})", monotone(lambda x: -math.log1p(math.exp(-x)))),
    "hardsigmoid": ("F.hardsigmoid({})", monotone(lambda x: min(max(x / 6 + 0.5, 0.0), 1.0))),
    "hardswish": ("F.hardswish({})", lambda v: (-0.375 if v.lo < 0 else v.lo, max(v.hi, 0.0))),
    "mish": ("F.mish({})", lambda v: (-0.31 if v.lo < 0 else v.lo * 0.86, max(v.hi, 0.0))),
    "atan": ("torch.atan({})", monotone(math.atan)),
    "asinh": ("torch.asinh({})", monotone(math.asinh)),
    "sinh": ("torch.sinh({})", monotone(math.sinh)),
    "cosh": ("torch.cosh({})", lambda v: (1.0, math.cosh(v.bound))),
}
"""Smooth unary float ops: template and the result interval."""

UNARY_EXACT: dict[str, tuple[str, Callable[[Var], tuple[float, float]]]] = {
    "neg": ("torch.neg({})", lambda v: (-v.hi, -v.lo)),
    "abs": ("torch.abs({})", lambda v: (0.0, v.bound)),
    "relu": ("torch.relu({})", lambda v: (max(v.lo, 0.0), max(v.hi, 0.0))),
    "clamp": ("torch.clamp({}, min=-1.0, max=1.5)", lambda v: (min(max(v.lo, -1.0), 1.5), max(min(v.hi, 1.5), -1))),
    "hardtanh": ("F.hardtanh({})", lambda v: (min(max(v.lo, -1.0), 1.0), max(min(v.hi, 1.0), -1.0))),
}
"""Unary ops every backend computes exactly: they keep a value exact."""

UNARY_STEP: dict[str, tuple[str, Callable[[Var], tuple[float, float]]]] = {
    "floor": ("torch.floor({})", monotone(math.floor)),
    "ceil": ("torch.ceil({})", monotone(math.ceil)),
    "round": ("torch.round({})", monotone(lambda x: float(round(x)))),
    "trunc": ("torch.trunc({})", monotone(math.trunc)),
    "sign": ("torch.sign({})", lambda v: (-1.0, 1.0)),
}
"""Discontinuous unary ops: only applied to exact values; their results are exact."""


def unary_float(b: Builder) -> bool:
    v = b.pick(is_float)
    if v is None:
        return False
    kind = b.choice(["smooth", "exact", "step", "guarded"] if v.exact else ["smooth", "exact", "guarded"])
    if kind == "guarded":
        return _guarded(b, v)
    table = {"smooth": UNARY_SMOOTH, "exact": UNARY_EXACT, "step": UNARY_STEP}[kind]
    name = b.choice(list(table))
    template, interval = table[name]
    lo, hi = interval(v)
    return b.emit(name, template.format(v.name), [v], [Out(v.shape, FLOAT, lo, hi, kind != "smooth" and v.exact,
                                                           v.contiguous)])


def _guarded(b: Builder, v: Var) -> bool:
    """exp, sqrt, log, log1p, rsqrt and reciprocal on operands inside their well-conditioned domain."""
    name = b.choice(["exp", "sqrt", "log", "log1p", "rsqrt", "reciprocal", "expm1"])
    if name in ("exp", "expm1"):
        if v.hi > 4:
            return False
        text, lo, hi = v.name, v.lo, v.hi
        out = (math.exp(lo), math.exp(hi)) if name == "exp" else (math.expm1(lo), math.expm1(hi))
    elif name == "log1p":
        text, lo, hi = safe_positive(v, 0.0) if v.lo < 0 else (v.name, v.lo, v.hi)
        out = (math.log1p(lo), math.log1p(hi))
    elif name == "reciprocal":
        text, lo, hi = safe_nonzero(v, 0.25)
        out = (-1 / 0.25, 1 / 0.25) if lo < 0 else (1 / hi, 1 / lo)
    else:
        margin = {"sqrt": 0.01, "log": 0.1, "rsqrt": 0.25}[name]
        text, lo, hi = safe_positive(v, margin)
        fn = {"sqrt": math.sqrt, "log": math.log, "rsqrt": lambda x: 1 / math.sqrt(x)}[name]
        out = tuple(sorted((fn(lo), fn(hi))))
    return b.emit(name, f"torch.{name}({text})", [v], [Out(v.shape, FLOAT, out[0], out[1], False, v.contiguous)])


def binary_float(b: Builder) -> bool:
    a = b.pick(is_float)
    if a is None:
        return False
    name = b.choice(["add", "sub", "mul", "div", "maximum", "minimum", "pow"])
    if name == "pow":
        return _pow(b, a)
    mixed = name in ("add", "sub", "mul", "maximum", "minimum")
    scalars = FLOAT_CONSTANTS if name in ("add", "sub", "mul", "div") else ()
    others = [INT, BOOL] if name in ("add", "mul") else [INT]
    p = b.partner(a, [FLOAT, *others] if mixed and b.coin() else [FLOAT], scalars)
    if p is None:
        return False
    shape = broadcast(a.shape, p.shape)
    if shape is None:
        return False
    tensors = [v for v in (a, p) if v.dtype != "scalar"]
    contiguous = all(v.contiguous for v in tensors)
    both_exact = a.exact and p.exact
    if name == "div":
        text, lo, hi = safe_nonzero(p, 0.25) if p.dtype != "scalar" else (p.name, p.lo, p.hi)
        out = interval_mul((a.lo, a.hi), (1 / hi, 1 / lo) if lo > 0 else (-4.0, 4.0))
        exact = both_exact and p.dtype == "scalar" and 1 / p.lo in EXACT_SCALES
        return b.emit("div", f"torch.div({a.name}, {text})", tensors, [Out(shape, FLOAT, *out, exact, contiguous)])
    x, y = (a, p) if p.dtype == "scalar" or b.coin() else (p, a)
    if name in ("add", "sub"):
        alpha = b.choice([1, 1, 2.0, 0.5]) if p.dtype != "scalar" else 1
        ylo, yhi = (y.lo * alpha, y.hi * alpha)
        out = (x.lo + ylo, x.hi + yhi) if name == "add" else (x.lo - yhi, x.hi - ylo)
        extra = f", alpha={alpha}" if alpha != 1 else ""
        return b.emit(name, f"torch.{name}({x.name}, {y.name}{extra})", tensors,
                      [Out(shape, FLOAT, *out, both_exact, contiguous)])
    if name == "mul":
        exact = both_exact and p.dtype == "scalar" and p.lo in EXACT_SCALES
        return b.emit("mul", f"torch.mul({x.name}, {y.name})", tensors,
                      [Out(shape, FLOAT, *interval_mul((x.lo, x.hi), (y.lo, y.hi)), exact, contiguous)])
    fn = max if name == "maximum" else min
    return b.emit(name, f"torch.{name}({x.name}, {y.name})", tensors,
                  [Out(shape, FLOAT, fn(x.lo, y.lo), fn(x.hi, y.hi), both_exact, contiguous)])


def _pow(b: Builder, a: Var) -> bool:
    """pow with a scalar exponent, a safe positive base, or a scalar base."""
    form = b.choice(["scalar_exponent", "tensor_exponent", "scalar_base"])
    if form == "scalar_exponent":
        e = b.choice([2, 3, 0.5, -1, 1.5, -0.5])
        if e in (0.5, 1.5, -0.5):
            text, lo, hi = safe_positive(a, 0.25)
        elif e == -1:
            text, lo, hi = safe_nonzero(a, 0.25)
        else:
            text, lo, hi = a.name, a.lo, a.hi
        ends = [x ** e for x in (lo, hi) if x != 0] + ([0.0] if lo <= 0 <= hi and e > 0 else [])
        if e == -1 and lo < 0:
            ends = [-4.0, 4.0]
        if e == 2:
            ends = [0.0, max(lo * lo, hi * hi)]
        return b.emit("pow", f"torch.pow({text}, {e})", [a], [Out(a.shape, FLOAT, min(ends), max(ends), False,
                                                                    a.contiguous)])
    if form == "scalar_base":
        base = b.choice([2.0, 0.5, 1.5])
        if a.bound > 5:
            return False
        ends = [base ** a.lo, base ** a.hi]
        return b.emit("pow", f"torch.pow({base}, {a.name})", [a], [Out(a.shape, FLOAT, min(ends), max(ends), False,
                                                                        a.contiguous)])
    e = b.partner(a, [FLOAT])
    if e is None or e.bound > 3:
        return False
    shape = broadcast(a.shape, e.shape)
    if shape is None:
        return False
    text, lo, hi = safe_positive(a, 0.5)
    ends = [x ** y for x in (lo, hi) for y in (e.lo, e.hi)]
    return b.emit("pow", f"torch.pow({text}, {e.name})", [a, e],
                  [Out(shape, FLOAT, min(ends), max(ends), False, a.contiguous and e.contiguous)])


def binary_int(b: Builder) -> bool:
    a = b.pick(lambda v: v.dtype == INT)
    if a is None:
        return False
    name = b.choice(["add", "sub", "mul", "maximum", "minimum", "remainder", "floor_divide", "trunc_divide", "fmod",
                     "true_divide", "bitwise_and", "bitwise_or", "bitwise_xor"])
    if name in ("remainder", "floor_divide", "trunc_divide", "fmod", "true_divide"):
        p = b.partner(a, [INT], (2, 3, -2))
        if p is None:
            return False
        text, lo, hi = safe_nonzero(p, 1) if p.dtype != "scalar" else (p.name, p.lo, p.hi)
        shape = broadcast(a.shape, p.shape)
        if shape is None:
            return False
        m = max(abs(lo), abs(hi))
        if name == "remainder":
            expr, out = f"torch.remainder({a.name}, {text})", (-m, m)
        elif name == "fmod":
            expr, out = f"torch.fmod({a.name}, {text})", (-m, m)
        elif name == "true_divide":
            tensors = [v for v in (a, p) if v.dtype != "scalar"]
            return b.emit("div", f"torch.div({a.name}, {text})", tensors,
                          [Out(shape, FLOAT, -a.bound, a.bound, False, all(v.contiguous for v in tensors))])
        else:
            mode = "floor" if name == "floor_divide" else "trunc"
            expr, out = f"torch.div({a.name}, {text}, rounding_mode='{mode}')", (-a.bound - 1, a.bound + 1)
        tensors = [v for v in (a, p) if v.dtype != "scalar"]
        return b.emit(name, expr, tensors, [Out(shape, INT, *out, True, all(v.contiguous for v in tensors))])
    p = b.partner(a, [INT], INT_CONSTANTS if name in ("add", "sub", "mul") else ())
    if p is None:
        return False
    shape = broadcast(a.shape, p.shape)
    if shape is None:
        return False
    x, y = (a, p) if p.dtype == "scalar" or b.coin() else (p, a)
    bits = 2 * max(x.bound, y.bound) + 1  # two's complement and/or/xor of |a|, |b| < 2^k stay within 2^k
    out = {"add": (x.lo + y.lo, x.hi + y.hi), "sub": (x.lo - y.hi, x.hi - y.lo), "bitwise_and": (-bits, bits),
           "bitwise_or": (-bits, bits), "bitwise_xor": (-bits, bits),
           "mul": interval_mul((x.lo, x.hi), (y.lo, y.hi)), "maximum": (max(x.lo, y.lo), max(x.hi, y.hi)),
           "minimum": (min(x.lo, y.lo), min(x.hi, y.hi))}[name]
    tensors = [v for v in (a, p) if v.dtype != "scalar"]
    return b.emit(name, f"torch.{name}({x.name}, {y.name})", tensors,
                  [Out(shape, INT, *out, True, all(v.contiguous for v in tensors))])


def unary_int(b: Builder) -> bool:
    v = b.pick(lambda v: v.dtype == INT)
    if v is None:
        return False
    name = b.choice(["neg", "abs", "sign"])
    out = {"neg": (-v.hi, -v.lo), "abs": (0, v.bound), "sign": (-1, 1)}[name]
    return b.emit(name, f"torch.{name}({v.name})", [v], [Out(v.shape, INT, *out, True, v.contiguous)])


def float_remainder(b: Builder) -> bool:
    a = b.pick(lambda v: v.dtype == FLOAT and v.exact)
    if a is None:
        return False
    d = b.choice([1.5, 2.0, 0.5])
    name = b.choice(["remainder", "fmod"])
    out = (0.0, d) if name == "remainder" else (-d, d)
    return b.emit(name, f"torch.{name}({a.name}, {d})", [a], [Out(a.shape, FLOAT, *out, False, a.contiguous)])


def compare(b: Builder) -> bool:
    a = b.pick(exact_or_int)
    if a is None:
        return False
    p = b.partner(a, [FLOAT, INT], FLOAT_CONSTANTS if a.dtype == FLOAT or b.coin() else INT_CONSTANTS)
    if p is None or (p.dtype == FLOAT and not p.exact):
        return False
    shape = broadcast(a.shape, p.shape)
    if shape is None:
        return False
    name = b.choice(["gt", "lt", "ge", "le", "eq", "ne"])
    tensors = [v for v in (a, p) if v.dtype != "scalar"]
    return b.emit(name, f"torch.{name}({a.name}, {p.name})", tensors,
                  [Out(shape, BOOL, 0, 1, True, all(v.contiguous for v in tensors))])


def logical(b: Builder) -> bool:
    a = b.pick(lambda v: v.dtype == BOOL)
    if a is None:
        return False
    name = b.choice(["logical_not", "bitwise_not", "logical_and", "logical_or", "logical_xor", "bitwise_and"])
    if name in ("logical_not", "bitwise_not"):
        return b.emit(name, f"torch.{name}({a.name})", [a], [Out(a.shape, BOOL, 0, 1, True, a.contiguous)])
    p = b.partner(a, [BOOL])
    shape = broadcast(a.shape, p.shape) if p is not None else None
    if p is None or shape is None:
        return False
    return b.emit(name, f"torch.{name}({a.name}, {p.name})", [a, p],
                  [Out(shape, BOOL, 0, 1, True, a.contiguous and p.contiguous)])


def where(b: Builder) -> bool:
    cond = b.pick(lambda v: v.dtype == BOOL)
    if cond is None:
        return False
    a = b.pick(lambda v: v.dtype in (FLOAT, INT) and broadcast(cond.shape, v.shape) is not None)
    if a is None:
        return False
    p = b.partner(a, [a.dtype], FLOAT_CONSTANTS if a.dtype == FLOAT or b.coin() else INT_CONSTANTS)
    shape = broadcast(cond.shape, a.shape, p.shape) if p is not None else None
    if p is None or shape is None:
        return False
    x, y = (a, p) if b.coin() else (p, a)
    tensors = [v for v in (cond, a, p) if v.dtype != "scalar"]
    dtype = FLOAT if p.dtype == "scalar" and isinstance(p.lo, float) else a.dtype  # int tensor, float scalar: float
    return b.emit("where", f"torch.where({cond.name}, {x.name}, {y.name})", tensors,
                  [Out(shape, dtype, min(a.lo, p.lo), max(a.hi, p.hi), a.exact and p.exact,
                       all(v.contiguous for v in tensors))])


def clamp_tensor(b: Builder) -> bool:
    """clamp with a tensor bound on one side (both sides could cross, which torch and ONNX define differently)."""
    a = b.pick(lambda v: v.dtype in (FLOAT, INT))
    if a is None:
        return False
    p = b.partner(a, [a.dtype])
    if p is None or broadcast(a.shape, p.shape) != a.shape:
        return False
    side = b.choice(["min", "max"])
    lo, hi = (max(a.lo, p.lo), max(a.hi, p.hi)) if side == "min" else (min(a.lo, p.lo), min(a.hi, p.hi))
    return b.emit("clamp", f"torch.clamp({a.name}, {side}={p.name})", [a, p],
                  [Out(a.shape, a.dtype, lo, hi, a.exact and p.exact, a.contiguous and p.contiguous)])


def cast(b: Builder) -> bool:
    v = b.pick(lambda v: v.dtype != FLOAT or v.exact)
    if v is None:
        return False
    targets = {FLOAT: [INT, BOOL], INT: [FLOAT, BOOL], BOOL: [FLOAT, INT]}[v.dtype]
    to = b.choice(targets)
    torch_dtype = {FLOAT: "torch.float32", INT: "torch.int64", BOOL: "torch.bool"}[to]
    lo, hi = (0, 1) if to == BOOL or v.dtype == BOOL else (math.trunc(v.lo), math.trunc(v.hi))
    return b.emit(f"to_{to}", f"{v.name}.to({torch_dtype})", [v], [Out(v.shape, to, lo, hi, True, v.contiguous)])


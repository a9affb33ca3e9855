"""The state of a program being drawn: values in scope with their shape, dtype, range and exactness, and the
helpers every op family uses to pick operands, create leaves and emit steps (see generator.py for the rules)."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence, TypeVar

from hypothesis import strategies as st

from crossgraph.compiler.fuzz.program import BOOL, FLOAT, INPUT_RANGE, INT, INT_RANGE, PARAM_RANGE, Leaf, Step

LIMIT = 64.0
INT_LIMIT = 2 ** 20
MAX_DIM, MAX_RANK, MAX_NUMEL = 6, 4, 1024
MAX_INPUTS, MAX_PARAMS = 4, 3
FLOAT_CONSTANTS = (0.5, 1.5, 2.0, -1.0, 3.0, 0.25)
INT_CONSTANTS = (1, 2, 3, -2)
EXACT_SCALES = (2.0, 0.5, -1.0, 4.0)
"""Scalars whose products are exact in binary floating point."""

T = TypeVar("T")
Shape = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Var:
    """A value of the program being drawn: its name in the source, shape, dtype and what is known about it.

    `lo`/`hi` bound its elements for all leaf values; `exact` says every backend computes it bit-identically;
    `contiguous` says `.view` may be applied (conservatively False after permutes, expands and strided slices).
    """

    name: str
    shape: Shape
    dtype: str
    lo: float
    hi: float
    exact: bool = True
    contiguous: bool = True

    @property
    def bound(self) -> float:
        return max(abs(self.lo), abs(self.hi))

    @property
    def rank(self) -> int:
        return len(self.shape)


@dataclasses.dataclass(frozen=True)
class Out:
    """What a step produces, before it is named."""

    shape: Shape
    dtype: str
    lo: float
    hi: float
    exact: bool = False
    contiguous: bool = True


def numel(shape: Sequence[int]) -> int:
    return math.prod(shape)


def broadcast(*shapes: Shape) -> Shape | None:
    """torch's broadcast of `shapes`, or None when they do not broadcast."""
    rank = max(len(s) for s in shapes)
    out = []
    for i in range(rank):
        sizes = {s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0} - {1}
        if len(sizes) > 1:
            return None
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def power(x: float, n: int) -> float:
    """x ** n as a float, inf where that would overflow (an interval bound, checked against the limits later)."""
    return math.inf if abs(x) > 1 and n * math.log(abs(x)) > 100 else float(x) ** n


def interval_mul(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    products = [x * y for x in a for y in b]
    return min(products), max(products)


class Builder:
    """The program being drawn: leaves, steps and the values in scope."""

    def __init__(self, draw: Callable[[st.SearchStrategy[T]], T]) -> None:
        self.draw = draw
        self.rotation = draw(st.integers(0, 2 ** 16))  # spreads hypothesis's bias to first options over all
        self.vars: list[Var] = []
        self.inputs: list[Leaf] = []
        self.params: list[Leaf] = []
        self.steps: list[Step] = []
        self.used: set[str] = set()

    # ---- drawing helpers ----
    def integer(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def choice(self, options: Sequence[T]) -> T:
        return options[(self.integer(0, len(options) - 1) + self.rotation) % len(options)]

    def coin(self) -> bool:
        return self.draw(st.booleans())

    def shape(self, min_rank: int = 1) -> Shape:
        return tuple(self.draw(st.lists(st.integers(1, MAX_DIM), min_size=min_rank, max_size=MAX_RANK)))

    def pick(self, ok: Callable[[Var], bool]) -> Var | None:
        """A value in scope satisfying `ok`, the newest half the time (so programs grow chains, not only fans)."""
        candidates = [v for v in reversed(self.vars) if ok(v)]
        if not candidates:
            return None
        return candidates[0] if self.coin() else self.choice(candidates)

    # ---- leaves and steps ----
    def mark(self) -> tuple[int, int, int]:
        return len(self.vars), len(self.inputs), len(self.params)

    def rollback(self, mark: tuple[int, int, int]) -> None:
        """Forget the leaves a failed family created, so no program has unused inputs."""
        del self.vars[mark[0]:], self.inputs[mark[1]:], self.params[mark[2]:]

    def leaf(self, shape: Shape, dtype: str = FLOAT, param: bool | None = None) -> Var | None:
        """A new input or (floats only) parameter of `shape`, or None when the program has enough of them."""
        can_param = dtype == FLOAT and len(self.params) < MAX_PARAMS
        can_input = len(self.inputs) < MAX_INPUTS
        if param is None:
            param = can_param and (not can_input or self.coin())
        if (param and not can_param) or (not param and not can_input):
            return None
        if param:
            leaf = Leaf(f"w{len(self.params)}", shape, dtype, param=True)
            self.params.append(leaf)
            lo, hi = PARAM_RANGE
            name = f"self.{leaf.name}"
        else:
            leaf = Leaf(f"x{len(self.inputs)}", shape, dtype)
            self.inputs.append(leaf)
            lo, hi = {FLOAT: INPUT_RANGE, INT: INT_RANGE, BOOL: (0, 1)}[dtype]
            name = leaf.name
        var = Var(name, shape, dtype, lo, hi)
        self.vars.append(var)
        return var

    def operand(self, shape: Shape, dtype: str = FLOAT, param: bool | None = None) -> Var | None:
        """A value of exactly `shape` and `dtype`: one in scope or a new leaf."""
        found = [v for v in self.vars if v.shape == shape and v.dtype == dtype]
        if found and self.coin():
            return self.choice(found)
        return self.leaf(shape, dtype, param)

    def emit(self, op: str, expr: str, operands: Sequence[Var], outs: Sequence[Out]) -> bool:
        """Add `outputs = expr` unless an output breaks the size or range limits; True when added."""
        for o in outs:
            if numel(o.shape) > MAX_NUMEL or len(o.shape) > MAX_RANK:
                return False
            limit = LIMIT if o.dtype == FLOAT else INT_LIMIT
            if not (math.isfinite(o.lo) and math.isfinite(o.hi) and max(abs(o.lo), abs(o.hi)) <= limit):
                return False
        first = sum(len(s.outputs) for s in self.steps)
        names = [f"v{first + i}" for i in range(len(outs))]
        self.used.update(v.name for v in operands)
        self.steps.append(Step(tuple(names), expr, op))
        self.vars += [Var(n, o.shape, o.dtype, o.lo, o.hi, o.exact, o.contiguous) for n, o in zip(names, outs)]
        return True

    def partner(self, a: Var, dtypes: Sequence[str], scalars: Sequence[float | int] = ()) -> Var | None:
        """A second operand for an elementwise op on `a`: a scalar, a value in scope that broadcasts with `a`,
        or a new leaf whose shape broadcasts with `a` (a suffix of it, some sizes 1, maybe a new leading dim)."""
        kind = self.choice(["scalar", "scope", "leaf"] if scalars else ["scope", "leaf"])
        if kind == "scalar":
            value = self.choice(scalars)
            return Var(repr(value), (), "scalar", value, value)
        if kind == "scope":
            found = [v for v in self.vars if v.dtype in dtypes and broadcast(a.shape, v.shape) is not None]
            if found:
                return self.pick(lambda v: v in found)
        dropped = self.integer(0, a.rank)
        shape = [1 if self.coin() and self.coin() else d for d in a.shape[dropped:]]
        if dropped == 0 and len(shape) < MAX_RANK and self.coin() and self.coin():
            shape.insert(0, self.integer(1, MAX_DIM))
        return self.leaf(tuple(shape), self.choice(dtypes))


def is_float(v: Var) -> bool:
    return v.dtype == FLOAT


def exact_or_int(v: Var) -> bool:
    return v.dtype == INT or (v.dtype == FLOAT and v.exact)


def draw_dim(b: Builder, rank: int) -> int:
    """A dim of a rank-`rank` tensor, negative half the time."""
    d = b.integer(0, rank - 1)
    return d - rank if b.coin() else d


def safe_positive(v: Var, margin: float) -> tuple[str, float, float]:
    """`v` as an operand that is >= margin: itself when its interval allows, else `abs(v) + margin`."""
    if v.lo >= margin:
        return v.name, v.lo, v.hi
    return (f"torch.abs({v.name}) + {margin}" if margin else f"torch.abs({v.name})"), margin, v.bound + margin


def safe_nonzero(v: Var, margin: float) -> tuple[str, float, float]:
    """`v` as a divisor at least `margin` away from zero."""
    if v.lo >= margin or v.hi <= -margin:
        return v.name, v.lo, v.hi
    return safe_positive(v, margin)


def monotone(fn: Callable[[float], float]) -> Callable[[Var], tuple[float, float]]:
    """The interval of a monotone increasing `fn` applied to a value."""
    return lambda v: (fn(v.lo), fn(v.hi))

"""programs(): a hypothesis strategy for random valid programs over core-ATen ops, for fuzzing the lowerings.

Shapes, dtypes and value ranges are tracked symbolically while a program is drawn, so every op gets operands it
accepts and every value stays well-conditioned in float32 (the goal is lowering bugs, not float noise):

- Leaves: float inputs are uniform in [-2, 2], parameters in [-1, 1], int64 inputs in [-4, 4] (program.py).
- Every value carries an interval that holds for any leaf values in those ranges; a float op is emitted only if
  its result stays within [-LIMIT, LIMIT] (ints within INT_LIMIT, so the jax target's int32 is exact). exp gets
  operands <= 4, fractional and tensor powers get bases >= 0.25 and tensor exponents within [-3, 3].
- sqrt, log, rsqrt, reciprocal and divisions get operands bounded away from their singularity: as they are when
  the interval allows, else through `abs(v) + c`.
- Discontinuous ops (comparisons, float->int/bool casts, floor/ceil/round/trunc/sign, float remainder,
  argmax/argmin) read only *exact* values: computed from leaves by ops that every backend rounds identically
  (views, neg, abs, relu, clamp, max/min, where, cat, add/sub, scaling by powers of two), so a last-bit
  difference upstream cannot flip their result. Sums, matmuls and transcendental ops make a value inexact.
- layer_norm uses eps >= 1e-2 (an expanded, near-constant row would amplify last-bit noise by 1/sqrt(eps)),
  and var divides by at least 1. Indices are folded into range with `remainder`.

Op families live in elementwise.py, structure.py, indexing.py, attention.py and creation.py; builder.py holds
the state they share. Programs have 1..max_ops steps, up to 4 inputs and 3 parameters, dims 1..6, rank <= 4.
"""

from __future__ import annotations

from typing import Callable, TypeVar

from hypothesis import strategies as st

from crossgraph.compiler.fuzz import attention, creation, elementwise, indexing, structure
from crossgraph.compiler.fuzz.builder import Builder, Out
from crossgraph.compiler.fuzz.program import FLOAT, INT, Program

T = TypeVar("T")

FAMILIES: dict[str, Callable[[Builder], bool]] = {
    "unary": elementwise.unary_float, "binary": elementwise.binary_float, "int": elementwise.binary_int,
    "int_unary": elementwise.unary_int, "remainder": elementwise.float_remainder, "compare": elementwise.compare,
    "logical": elementwise.logical, "where": elementwise.where, "cast": elementwise.cast,
    "matmul": structure.matmul, "reduce": structure.reduce_dims, "full_reduce": structure.full_reduce,
    "softmax": structure.softmax, "layer_norm": structure.layer_norm, "reshape": structure.reshape,
    "permute": structure.permute, "unsqueeze": structure.unsqueeze_squeeze, "expand": structure.expand,
    "slice": structure.slice_or_select, "cat": structure.cat, "split": structure.split,
    "clamp": elementwise.clamp_tensor, "scan": structure.scan_or_sort, "flip": indexing.flip_or_roll,
    "pad": indexing.pad, "repeat": indexing.repeat, "triangle": indexing.triangle,
    "index_select": indexing.index_select, "gather": indexing.gather, "attention": attention.attention,
    "create": creation.create,
}
"""Op families a step is drawn from; each draws its operands and returns False when none fits."""

WEIGHTS = {"unary": 6, "binary": 4, "matmul": 2, "reduce": 2, "reshape": 2, "attention": 2}
"""How often a family is tried, by repetition in the draw (others once)."""

_DRAWN = [name for name in FAMILIES for _ in range(WEIGHTS.get(name, 1))]
MAX_OUTPUTS = 3
"""Values a program returns: the last steps' unused results (plus, sometimes, one used result)."""


@st.composite
def _programs(draw: Callable[[st.SearchStrategy[T]], T], max_ops: int) -> Program:
    b = Builder(draw)
    first = b.leaf(b.shape(), b.choice([FLOAT, FLOAT, FLOAT, INT]), param=False)
    assert first is not None
    target = max_ops - b.integer(0, max_ops - 1)  # hypothesis favours small draws; programs favour length
    attempts = 0
    while len(b.steps) < target and attempts < 4 * max_ops:
        attempts += 1
        mark = b.mark()
        if not FAMILIES[b.choice(_DRAWN)](b):
            b.rollback(mark)
    if not b.steps:  # every family drawn failed: a plain tanh always fits
        floats = [v for v in b.vars if v.dtype == FLOAT]
        src = floats[0] if floats else b.vars[0]
        expr = f"torch.tanh({src.name})" if floats else f"{src.name}.to(torch.float32)"
        b.emit("tanh" if floats else "to_float32", expr, [src],
               [Out(src.shape, FLOAT, -1, 1) if floats else Out(src.shape, FLOAT, src.lo, src.hi, True)])
    produced = [n for s in b.steps for n in s.outputs]
    outputs = [n for n in produced if n not in b.used][-MAX_OUTPUTS:]
    inner = [n for n in produced if n in b.used]
    if inner and b.coin() and b.coin():  # a value the program also uses, as models return hidden states
        outputs.insert(0, b.choice(inner))
    return Program(tuple(b.inputs), tuple(b.params), tuple(b.steps), tuple(outputs),
                   seed=draw(st.integers(0, 2 ** 16)))


def programs(max_ops: int = 12) -> st.SearchStrategy[Program]:
    """Random valid programs of 1..`max_ops` steps (see the module docstring for what keeps them valid)."""
    if max_ops < 1:
        raise ValueError(f"max_ops must be >= 1, got {max_ops}")
    return _programs(max_ops)


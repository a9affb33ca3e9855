"""Data-movement op families: flip, roll, constant pad, repeat, tril/triu, index_select and gather.

Index tensors come from int values folded into range with `torch.remainder(i, size)`, so every index is valid
for any leaf values. All of these keep a value's range and exactness (pad adds its constant, tril/triu zeros).
"""

from __future__ import annotations

from crossgraph.compiler.fuzz.builder import FLOAT_CONSTANTS, INT_CONSTANTS, MAX_DIM, Builder, Out, draw_dim, numel
from crossgraph.compiler.fuzz.program import BOOL, FLOAT, INT


def flip_or_roll(b: Builder) -> bool:
    v = b.pick(lambda v: v.rank >= 1)
    if v is None:
        return False
    dims = sorted({draw_dim(b, v.rank) % v.rank for _ in range(b.integer(1, v.rank))})
    out = Out(v.shape, v.dtype, v.lo, v.hi, v.exact, False)
    if b.coin():
        return b.emit("flip", f"torch.flip({v.name}, {tuple(dims)!r})", [v], [out])
    shifts = tuple(b.integer(-MAX_DIM, MAX_DIM) for _ in dims)
    return b.emit("roll", f"torch.roll({v.name}, {shifts!r}, {tuple(dims)!r})", [v], [out])


def pad(b: Builder) -> bool:
    """F.pad with a constant on the last one or two dims; negative pads crop, keeping every size >= 1."""
    v = b.pick(lambda v: v.rank >= 1 and v.dtype != BOOL)
    if v is None:
        return False
    pads: list[int] = []
    for size in reversed(v.shape[-b.integer(1, min(2, v.rank)):]):
        before, after = b.integer(-1, 2), b.integer(-1, 2)
        if size + before + after < 1:
            return False
        pads += [before, after]
    value = b.choice(FLOAT_CONSTANTS if v.dtype == FLOAT else INT_CONSTANTS)
    shape = list(v.shape)
    for i in range(len(pads) // 2):
        shape[-1 - i] += pads[2 * i] + pads[2 * i + 1]
    return b.emit("pad", f"F.pad({v.name}, {tuple(pads)!r}, value={value})", [v],
                  [Out(tuple(shape), v.dtype, min(v.lo, value), max(v.hi, value), v.exact)])


def repeat(b: Builder) -> bool:
    v = b.pick(lambda v: True)
    if v is None:
        return False
    reps = [b.integer(1, 3) for _ in range(v.rank + b.integer(0, 1))] or [b.integer(1, 3)]
    shape = tuple(reps[:len(reps) - v.rank]) + tuple(r * s for r, s in zip(reps[len(reps) - v.rank:], v.shape))
    return b.emit("repeat", f"{v.name}.repeat({', '.join(map(str, reps))})", [v],
                  [Out(shape, v.dtype, v.lo, v.hi, v.exact)])


def triangle(b: Builder) -> bool:
    v = b.pick(lambda v: v.rank >= 2 and v.dtype != BOOL)
    if v is None:
        return False
    name, k = b.choice(["tril", "triu"]), b.integer(-2, 2)
    return b.emit(name, f"torch.{name}({v.name}, diagonal={k})", [v],
                  [Out(v.shape, v.dtype, min(v.lo, 0), max(v.hi, 0), v.exact, v.contiguous)])


def index_select(b: Builder) -> bool:
    v = b.pick(lambda v: v.rank >= 1)
    if v is None:
        return False
    d = draw_dim(b, v.rank)
    index = b.operand((b.integer(1, MAX_DIM),), INT)
    if index is None:
        return False
    shape = v.shape[:d % v.rank] + index.shape + v.shape[d % v.rank + 1:]
    return b.emit("index_select", f"torch.index_select({v.name}, {d}, torch.remainder({index.name}, "
                  f"{v.shape[d]}))", [v, index], [Out(shape, v.dtype, v.lo, v.hi, v.exact)])


def gather(b: Builder) -> bool:
    v = b.pick(lambda v: v.rank >= 1)
    if v is None:
        return False
    d = draw_dim(b, v.rank)
    shape = tuple(b.integer(1, MAX_DIM) if i == d % v.rank else b.integer(1, s) for i, s in enumerate(v.shape))
    if numel(shape) > 256:
        return False
    index = b.operand(shape, INT)
    if index is None:
        return False
    return b.emit("gather", f"torch.gather({v.name}, {d}, torch.remainder({index.name}, {v.shape[d]}))",
                  [v, index], [Out(shape, v.dtype, v.lo, v.hi, v.exact)])

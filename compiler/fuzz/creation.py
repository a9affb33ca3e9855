"""The creation op family: arange, full, ones/zeros and their `_like` forms, which put constants computed at run
time into the graph (sized after a value in scope, so later steps can combine them with it)."""

from __future__ import annotations

from crossgraph.compiler.fuzz.builder import FLOAT_CONSTANTS, INT_CONSTANTS, Builder, Out
from crossgraph.compiler.fuzz.program import BOOL, FLOAT, INT

_TORCH_DTYPE = {FLOAT: "torch.float32", INT: "torch.int64", BOOL: "torch.bool"}


def create(b: Builder) -> bool:
    v = b.pick(lambda v: True)
    if v is None:
        return False
    kind = b.choice(["arange", "full", "ones_zeros", "like"])
    if kind == "arange":
        n = v.shape[-1] if v.rank else 1
        start, step = b.integer(-3, 3), b.choice([1, 2, -1])
        dtype = b.choice([FLOAT, INT])
        end = start + n * step
        return b.emit("arange", f"torch.arange({start}, {end}, {step}, dtype={_TORCH_DTYPE[dtype]})", [],
                      [Out((n,), dtype, min(start, end), max(start, end), True)])
    if kind == "full":
        dtype = b.choice([FLOAT, INT])
        value = b.choice(FLOAT_CONSTANTS if dtype == FLOAT else INT_CONSTANTS)
        return b.emit("full", f"torch.full({v.shape!r}, {value})", [], [Out(v.shape, dtype, value, value, True)])
    dtype = b.choice([FLOAT, INT, BOOL])
    if kind == "ones_zeros":
        name = b.choice(["ones", "zeros"])
        return b.emit(name, f"torch.{name}({v.shape!r}, dtype={_TORCH_DTYPE[dtype]})", [],
                      [Out(v.shape, dtype, int(name == "ones"), int(name == "ones"), True)])
    name = b.choice(["ones_like", "zeros_like", "full_like"])
    if name == "full_like":
        value = b.choice(FLOAT_CONSTANTS if v.dtype == FLOAT else INT_CONSTANTS if v.dtype == INT else (True,))
        return b.emit(name, f"torch.full_like({v.name}, {value})", [v],
                      [Out(v.shape, v.dtype, float(value), float(value), True)])
    one = int(name == "ones_like")
    return b.emit(name, f"torch.{name}({v.name}, dtype={_TORCH_DTYPE[dtype]})", [v],
                  [Out(v.shape, dtype, one, one, True)])

"""A Graph's user-input shapes as `jax.export` symbolic shapes: torch.export's symbols become JAX dimension
variables of the same names, with the graph's ranges as constraints.

JAX assumes every dimension variable is at least 1, so a dimension whose torch range starts at 0 accepts 1 and up
in an exported artifact.
"""

from __future__ import annotations

import operator
from functools import reduce
from typing import Any

import jax
import sympy
import torch
from jax import export

from crossgraph.compiler.jaxlower.dtypes import to_jax
from crossgraph.graphs import Graph, InputError

_LIMIT = 1 << 62  # bounds at or above this are torch's "unbounded"


def input_specs(graph: Graph) -> list[jax.ShapeDtypeStruct]:
    """One ShapeDtypeStruct per user input: static sizes as ints, dynamic ones as symbolic dimensions."""
    values = [node.meta.get("val") for node in graph.input_nodes()]
    exprs = [[size.node.expr if isinstance(size, torch.SymInt) else int(size) for size in v.shape] for v in values]
    symbols = sorted({s for dims in exprs for d in dims if not isinstance(d, int) for s in d.free_symbols}, key=str)
    if not symbols:
        return [jax.ShapeDtypeStruct(tuple(dims), to_jax(v.dtype)) for dims, v in zip(exprs, values)]
    scope = export.SymbolicScope(_constraints(graph, symbols))
    dims_of = dict(zip(symbols, export.symbolic_shape(", ".join(map(str, symbols)), scope=scope)))
    return [jax.ShapeDtypeStruct(tuple(d if isinstance(d, int) else _evaluate(d, dims_of) for d in dims),
                                 to_jax(v.dtype)) for dims, v in zip(exprs, values)]


def _constraints(graph: Graph, symbols: list[sympy.Symbol]) -> list[str]:
    """`s >= lo` and `s <= hi` for each symbol whose range is narrower than JAX's default (1 and up)."""
    out = []
    for symbol in symbols:
        bounds = graph.exported.range_constraints.get(symbol)
        if bounds is None:
            continue
        if _finite(bounds.lower) and int(bounds.lower) > 1:
            out.append(f"{symbol} >= {int(bounds.lower)}")
        if _finite(bounds.upper):
            out.append(f"{symbol} <= {int(bounds.upper)}")
    return out


def _finite(bound: Any) -> bool:
    """True for a bound that is a plain integer below the limit; torch's int_oo and sympy's oo are not."""
    return bool(getattr(bound, "is_Integer", isinstance(bound, int))) and abs(int(bound)) < _LIMIT


_FUNCTIONS = {"FloorDiv": operator.floordiv, "Mod": operator.mod, "PythonMod": operator.mod,
              "Max": jax.core.max_dim, "Min": jax.core.min_dim}


def _evaluate(expr: sympy.Expr, dims: dict[sympy.Symbol, Any]) -> Any:
    """A torch size expression over symbols, as a JAX dimension expression."""
    if expr.is_Symbol:
        return dims[expr]
    if expr.is_Integer:
        return int(expr)
    parts = [_evaluate(a, dims) for a in expr.args]
    if isinstance(expr, sympy.Add):
        return reduce(operator.add, parts)
    if isinstance(expr, sympy.Mul):
        return reduce(operator.mul, parts)
    fn = _FUNCTIONS.get(type(expr).__name__)
    if fn is None:
        raise InputError(f"input size {expr} cannot be expressed as a jax.export symbolic shape")
    return reduce(fn, parts)

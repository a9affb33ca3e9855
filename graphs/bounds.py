"""The sizes a Graph can really take: upper bounds of its dynamic dimensions, and which inputs index tables.

torch.export gives a dimension the model does not fix the range `[2, int_oo]`, even where the model cannot go
that far: GPT-2 looks its positions `arange(T)` up in a table of `n_positions` rows, so a longer sequence reads
past the table (JAX then silently clamps or fills with NaN, ONNX Runtime fails in a later broadcast, AOTInductor
asserts). Where a bound comes from:

  * the model: an `embedding`, `index_select` or `index` whose indices are an `arange` ending at a symbolic
    size (read back through value-preserving ops: views, copies, casts) bounds that symbol by the table's size
    along the indexed dimension;
  * torch.export's guards (`s <= 512` where a sliced position table must match the sequence): already in the
    program's range constraints;
  * the user: `max_sizes={"input_ids": {1: 64}}` (the CLI's `--max input_ids.1=64`).

`narrow(graph, ...)` writes the bounds into the program's range constraints (and its shape environment), where
every target reads them: the manifest's `dynamic_dims`, the jax artifact's symbolic-shape constraints, the ONNX
and AOTInductor wrappers' shape checks. Narrowing a range is always sound: the graph stays valid on a subset of
the sizes it was traced for.

The same analysis tells which user inputs are indices into a table, and how many rows it has
(`index_bounds`): the strategies draw indices below it, and the jax artifact refuses indices outside it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import sympy
import torch
from torch.fx import Node
from torch.utils._sympy.value_ranges import ValueRanges

from crossgraph.graphs.errors import InputError
from crossgraph.graphs.graph import Graph

VALUE_PRESERVING = frozenset({"view", "_unsafe_view", "reshape", "expand", "unsqueeze", "squeeze", "permute",
                              "transpose", "t", "clone", "contiguous", "slice", "select", "alias", "flatten",
                              "_to_copy", "to"})
"""Ops that only move, copy or cast index values: an index read through them is still its source's value."""


@dataclasses.dataclass(frozen=True)
class IndexUse:
    """An input or symbol used as indices into `rows` entries of `table` (a weight name, or a node's)."""

    rows: int
    table: str
    node: str
    negative: bool = False
    """Whether torch takes negative indices here (advanced indexing counts them from the end; embedding and
    index_select refuse them)."""

    @property
    def low(self) -> int:
        return -self.rows if self.negative else 0


def opname(node: Node) -> str | None:
    """The ATen op's name (`embedding`) of a call_function node, else None."""
    return getattr(node.target, "_opname", None) if node.op == "call_function" else None


def indexings(graph: Graph) -> list[tuple[Node, int, Node]]:
    """(index node, size of the dim it indexes, the indexing node) for each embedding, index_select and index
    whose indexed dimension is static."""
    found = []
    for node in graph.fx.nodes:
        name = opname(node)
        if name == "embedding":
            table, indices, dims = node.args[0], [node.args[1]], [0]
        elif name == "index_select":
            table, indices, dims = node.args[0], [node.args[2]], [node.args[1]]
        elif name == "index":
            table, indices = node.args[0], list(node.args[1])
            dims = list(range(len(indices)))
        else:
            continue
        shape = table.meta["val"].shape
        for index, dim in zip(indices, dims):
            if isinstance(index, Node) and isinstance(shape[dim], int):
                found.append((index, shape[dim], node))
    return found


def index_uses(graph: Graph) -> tuple[dict[str, IndexUse], dict[sympy.Symbol, IndexUse]]:
    """User-input placeholders used as indices, by placeholder name, and symbols whose `arange` is used as
    indices, each with the smallest table it indexes.

    An index is read through value-preserving ops back to where it comes from: a placeholder (its values must
    stay below the table's size) or an `arange(start, end)` whose end is a symbol (the symbol must too).
    """
    user = set(graph.exported.graph_signature.user_inputs)
    names = _placeholder_names(graph)
    inputs: dict[str, IndexUse] = {}
    symbols: dict[sympy.Symbol, IndexUse] = {}
    for index, size, user_node in indexings(graph):
        source = index
        while opname(source) in VALUE_PRESERVING and isinstance(source.args[0], Node):
            source = source.args[0]
        table = user_node.args[0]
        use = IndexUse(size, names.get(table.name, table.name) if isinstance(table, Node) else "?", user_node.name,
                       negative=opname(user_node) == "index")
        if source.op == "placeholder" and source.name in user:
            if source.name not in inputs or size < inputs[source.name].rows:
                inputs[source.name] = use
        elif opname(source) == "arange":
            end = source.args[1] if len(source.args) > 1 else source.args[0]
            val = end.meta.get("val") if isinstance(end, Node) else None
            if isinstance(val, torch.SymInt) and isinstance(val.node.expr, sympy.Symbol):
                sym = val.node.expr
                if sym not in symbols or size < symbols[sym].rows:
                    symbols[sym] = use
    return inputs, symbols


def index_bounds(graph: Graph) -> tuple[dict[str, int], dict[sympy.Symbol, int]]:
    """`index_uses` as sizes only: {placeholder: rows}, {symbol: rows}."""
    inputs, symbols = index_uses(graph)
    return {k: v.rows for k, v in inputs.items()}, {k: v.rows for k, v in symbols.items()}


def input_index_bounds(graph: Graph) -> dict[str, IndexUse]:
    """User inputs used as indices into a table, by input name (Graph.input_names), with the table."""
    inputs, _ = index_uses(graph)
    by_node = {node.name: name for name, node in zip(graph.input_names, graph.input_nodes())}
    return {by_node[k]: v for k, v in inputs.items() if k in by_node}


def _placeholder_names(graph: Graph) -> dict[str, str]:
    """Placeholder name -> the weight, buffer or constant it stands for."""
    sig = graph.exported.graph_signature
    found: dict[str, str] = {}
    for mapping in (getattr(sig, "inputs_to_parameters", {}), getattr(sig, "inputs_to_buffers", {}),
                    getattr(sig, "inputs_to_lifted_tensor_constants", {})):
        found.update(mapping)
    return found


def input_symbols(graph: Graph) -> dict[tuple[str, int], sympy.Expr | int]:
    """(input name, dim) -> its size: an int where static, else the symbolic expression."""
    found: dict[tuple[str, int], sympy.Expr | int] = {}
    for name, node in zip(graph.input_names, graph.input_nodes()):
        for d, size in enumerate(getattr(node.meta.get("val"), "shape", ())):
            found[name, d] = size.node.expr if isinstance(size, torch.SymInt) else int(size)
    return found


def model_bounds(graph: Graph) -> dict[sympy.Symbol, tuple[int, str]]:
    """Upper bounds the model itself sets on its symbols, each with the reason in words."""
    _, symbols = index_uses(graph)
    return {sym: (use.rows, f"{sym} indexes the {use.rows} rows of {use.table} ({use.node})")
            for sym, use in symbols.items()}


def bound(graph: Graph, max_sizes: Mapping[str, Mapping[int, int]] | None = None) -> dict[str, str]:
    """Narrow `graph`'s dynamic ranges in place to the model's own bounds and `max_sizes` (input name -> {dim:
    largest size}); returns the reason for each narrowed symbol. A max on an unknown input or dim, or one below
    the dim's static size or its range's lower end, is an InputError."""
    sizes = input_symbols(graph)
    upper: dict[sympy.Symbol, tuple[int, str]] = dict(model_bounds(graph))
    for name, dims in (max_sizes or {}).items():
        if name not in graph.input_names:
            raise InputError(f"--max names input {name!r}; the inputs are {', '.join(graph.input_names)}")
        for dim, limit in dims.items():
            if (name, dim) not in sizes:
                rank = sum(1 for n, _ in sizes if n == name)
                raise InputError(f"--max {name}.{dim}: input {name!r} has {rank} dimension(s)")
            size = sizes[name, dim]
            if isinstance(size, int):
                if size > limit:
                    raise InputError(f"--max {name}.{dim}={limit}: that dimension is fixed at {size}")
                continue
            if not isinstance(size, sympy.Symbol):
                raise InputError(f"--max {name}.{dim}: its size is {size}, not one dynamic dimension; "
                                 "bound the input whose dimension it is derived from")
            if size not in upper or limit < upper[size][0]:
                upper[size] = (limit, f"{size} capped by --max {name}.{dim}={limit}")
    return narrow(graph, upper)


def narrow(graph: Graph, upper: Mapping[sympy.Symbol, tuple[int, str]]) -> dict[str, str]:
    """Lower each symbol's upper bound to `upper[symbol][0]` where that is tighter, in the program's range
    constraints and its shape environment; returns {symbol: reason} for those narrowed."""
    ranges = dict(graph.exported.range_constraints)
    env = _shape_env(graph)
    done: dict[str, str] = {}
    for sym, (high, reason) in upper.items():
        vr = ranges.get(sym)
        if vr is None:
            continue
        if _finite(vr.upper) and int(vr.upper) <= high:
            continue
        if _finite(vr.lower) and int(vr.lower) > high:
            raise InputError(f"{reason}, but {sym} is at least {int(vr.lower)}")
        example = _example_value(env, sym)
        if example is not None and int(example) > high:
            raise InputError(f"{reason}, but the example inputs have {sym} = {int(example)}")
        ranges[sym] = ValueRanges(vr.lower, sympy.Integer(high))
        if env is not None and sym in env.var_to_range:
            old = env.var_to_range[sym]
            env.var_to_range[sym] = ValueRanges(old.lower, sympy.Integer(high))
        done[str(sym)] = reason
    if done:
        graph.exported._range_constraints = ranges
    return done


def _example_value(env: Any, sym: sympy.Symbol) -> Any:
    """The symbol's size in the example inputs the program was traced with, if the shape env knows it."""
    if env is None:
        return None
    values = env.backed_var_to_val if hasattr(env, "backed_var_to_val") else env.var_to_val
    return values.get(sym)


def _finite(value: Any) -> bool:
    return bool(getattr(value, "is_Integer", False)) and abs(int(value)) < (1 << 62)


def _shape_env(graph: Graph) -> Any:
    for node in graph.input_nodes():
        for size in getattr(node.meta.get("val"), "shape", ()):
            if isinstance(size, torch.SymInt):
                return size.node.shape_env
    return None


def parse_max(text: str) -> tuple[str, int, int]:
    """`NAME.DIM=N` (the CLI's --max) as (input name, dim, N); anything else is an InputError saying the form."""
    head, sep, value = text.partition("=")
    name, dot, dim = head.strip().rpartition(".")
    try:
        if not (sep and dot and name):
            raise ValueError
        parsed = int(dim), int(value)
    except ValueError:
        raise InputError(f"--max {text!r}: expected NAME.DIM=N, e.g. input_ids.1=64") from None
    if parsed[1] < 1 or parsed[0] < 0:
        raise InputError(f"--max {text!r}: DIM must be 0 or more and N at least 1")
    return name, parsed[0], parsed[1]


def max_sizes(texts: list[str] | None) -> dict[str, dict[int, int]]:
    """Repeated `--max NAME.DIM=N` options as {name: {dim: N}} (a later one for the same dim wins)."""
    found: dict[str, dict[int, int]] = {}
    for text in texts or ():
        name, dim, limit = parse_max(text)
        found.setdefault(name, {})[dim] = limit
    return found


# ---- checking inputs against a graph's shapes ---------------------------------------------------------------
# A signature is JSON (it travels inside AOTInductor packages and ONNX files): input names, dtypes and sizes
# (ints, or symbolic sizes with their linear form scale * symbol + offset), each symbol's [lower, upper or None].

SIGNATURE_FORMAT = "crossgraph.inductor/1"


def signature_of(graph: Graph) -> dict[str, Any]:
    """Input names, dtypes and sizes (ints, or symbolic sizes with their linear form), symbol ranges, output names."""
    ranges = graph.exported.range_constraints
    symbols: dict[str, list[int | None]] = {}
    inputs = []
    for name, node in zip(graph.input_names, graph.input_nodes()):
        val = node.meta["val"]
        shape: list[int | dict[str, Any]] = []
        for size in val.shape:
            expr = size.node.expr if isinstance(size, torch.SymInt) else sympy.Integer(size)
            if expr.is_number:
                shape.append(int(expr))
                continue
            shape.append({"text": str(expr), **_linear_form(expr)})
            for sym in expr.free_symbols:
                vr = ranges.get(sym)
                upper = vr.upper if vr is not None else None
                symbols[str(sym)] = [int(vr.lower) if vr is not None else 0,
                                     int(upper) if _finite(upper) else None]
        inputs.append({"name": name, "dtype": str(val.dtype).removeprefix("torch."), "shape": shape})
    return {"format": SIGNATURE_FORMAT, "inputs": inputs, "symbols": symbols, "outputs": list(graph.output_names)}


def _linear_form(expr: sympy.Expr) -> dict[str, Any]:
    """{symbol, scale, offset} when expr is scale * symbol + offset with integers, scale > 0; else {}."""
    if len(expr.free_symbols) != 1:
        return {}
    (sym,) = expr.free_symbols
    try:
        poly = sympy.Poly(expr, sym)
    except sympy.PolynomialError:
        return {}
    coeffs = poly.all_coeffs()
    if poly.degree() != 1 or not all(c.is_Integer for c in coeffs) or coeffs[0] <= 0:
        return {}
    return {"symbol": str(sym), "scale": int(coeffs[0]), "offset": int(coeffs[1])}


@dataclasses.dataclass(frozen=True)
class Size:
    """A symbolic size: `text` as torch printed it; scale * symbol + offset when it has that form (else unchecked)."""

    text: str
    symbol: str | None = None
    scale: int = 1
    offset: int = 0


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One input of a signature: its name, dtype and sizes."""

    name: str
    dtype: str
    sizes: list[int | Size]

    @classmethod
    def parse(cls, spec: dict[str, Any]) -> InputSpec:
        sizes: list[int | Size] = []
        for size in spec["shape"]:
            if isinstance(size, int):
                sizes.append(size)
            elif "symbol" in size:
                sizes.append(Size(str(size["text"]), str(size["symbol"]), int(size["scale"]), int(size["offset"])))
            else:
                sizes.append(Size(str(size["text"])))
        if any(isinstance(s, Size) and s.scale <= 0 for s in sizes):
            raise ValueError(f"input '{spec['name']}' has a size scale below 1")
        return cls(str(spec["name"]), str(spec["dtype"]), sizes)

    def describe(self) -> str:
        return "[" + ", ".join(s.text if isinstance(s, Size) else str(s) for s in self.sizes) + "]"

    def mismatch(self, shape: tuple[int, ...], values: dict[str, tuple[int, Any, Any, int]],
                 what: str) -> InputError:
        known = ", ".join(f"{symbol} = {v[0]}" for symbol, v in values.items())
        return InputError(f"input '{self.name}' has shape {shape}; {what} takes {self.describe()}"
                          + (f" where {known}" if known else ""))


class Signature:
    """A signature (see `signature_of`) that checks inputs: `check(inputs)` raises InputError naming the input, the
    dimension and the bound for a shape the graph cannot take."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.inputs = [InputSpec.parse(spec) for spec in data["inputs"]]
        self.ranges = {str(name): (int(low), None if high is None else int(high))
                       for name, (low, high) in data["symbols"].items()}

    @classmethod
    def of(cls, graph: Graph) -> Signature:
        return cls(signature_of(graph))

    def check(self, inputs: Any, what: str = "the model", *, dtypes: bool = True) -> None:
        """InputError unless count, (with `dtypes`) dtypes, ranks and sizes match, each symbol taking one value
        within its range. Inputs are anything with `.shape` (and `.dtype`): tensors, numpy or jax arrays."""
        if len(inputs) != len(self.inputs):
            raise InputError(f"{len(inputs)} inputs given; {what} takes {len(self.inputs)} "
                             f"({', '.join(s.name for s in self.inputs)})")
        values: dict[str, tuple[int, InputSpec, tuple[int, ...], int]] = {}
        for spec, x in zip(self.inputs, inputs):
            shape = tuple(int(d) for d in x.shape)
            dtype = str(x.dtype).removeprefix("torch.")
            if dtypes and dtype != spec.dtype:
                raise InputError(f"input '{spec.name}' is {dtype}; {what} takes {spec.dtype}")
            if len(shape) != len(spec.sizes):
                raise spec.mismatch(shape, values, what)
            for dim, (size, got) in enumerate(zip(spec.sizes, shape)):
                if isinstance(size, int):
                    if size != got:
                        raise spec.mismatch(shape, values, what)
                elif size.symbol is not None:
                    value, rest = divmod(got - size.offset, size.scale)
                    if rest or (size.symbol in values and values[size.symbol][0] != value):
                        raise spec.mismatch(shape, values, what)
                    values.setdefault(size.symbol, (value, spec, shape, dim))
        for symbol, (value, spec, shape, dim) in values.items():
            low, high = self.ranges.get(symbol, (0, None))
            if value < low or (high is not None and value > high):
                side = f"above its bound {high}" if high is not None and value > high else f"below {low}"
                so = f", so {symbol} = {value}" if shape[dim] != value else ""
                raise InputError(f"input '{spec.name}' dim {dim} is {shape[dim]}{so}, {side}: {what} takes "
                                 f"{spec.describe()} with {symbol} in [{low}, {'inf' if high is None else high}] "
                                 f"(got shape {shape})")

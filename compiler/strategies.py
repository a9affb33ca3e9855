"""Hypothesis strategies for parity testing: inputs a graph accepts, perturbed weights, profiles, plain draws.

Use them in your own test suite to check a lowering on many inputs instead of one example:

    from hypothesis import given
    from crossgraph.compiler import strategies as cst

    graph = capture(model, example, dynamic_shapes=...)

    @given(cst.inputs(graph, example))
    @cst.PROFILES["ci"]
    def test_onnx_parity(inputs):
        expected = graph(*inputs)
        actual = onnx_artifact(*inputs)
        ...

    @given(cst.inputs(graph, example), cst.perturbed_parameters(graph))
    @cst.PROFILES["ci"]
    def test_parity_on_other_weights(inputs, params):
        other = cst.with_parameters(graph, params)
        ...

What is drawn (every value finite: no NaN or infinity goes in, so one that comes out is the model's doing):
  * shapes: static dims as captured; each symbolic dim from its range constraint, with an unbounded upper end
    clamped to twice the example's size (or lower + 16 without an example); dims sharing a symbol stay equal;
    a symbol that sizes an `arange` indexing an embedding stays within the table's rows.
  * floats: one seed plus, per input, a distribution (normal, uniform in [-scale, scale], or normal with a
    drawn fraction of "special" values 0, +-1 and +-large) and a scale in 1e-3..1e2; large is 1e4, or less for
    float16 (a value whose fourth power still fits the dtype). Tensors come from a seeded torch.Generator.
  * integers: indices of an embedding, `index_select` or `index` stay below the indexed table's size; other
    integers stay within the example's min..max (or [0, 16) without one).
  * masks (bool inputs, and integer inputs named like a mask or whose example is all 0/1): 0/1 with at least
    one 1 in every row (last dim), drawn as all ones, right padding, or random.
Hypothesis shrinks the seed, the distributions, the scales and the dims towards 0, normal, 1.0 and the smallest
shape.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any, Callable, Mapping, Sequence, TypeVar

import sympy
import torch
import torch.utils._pytree as pytree
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy
from torch.fx import Node

from crossgraph.graphs import Graph, InputError, bounds
from crossgraph.passes import program

T = TypeVar("T")

_SIZE_TRIES = 10
"""Draws of the dynamic sizes before falling back to the example's, when the program's guards reject them."""
_DISTRIBUTIONS = ("normal", "uniform", "special")
_INPUT_SCALES = (1.0, 0.1, 10.0, 1e-3, 1e2)  # first is what hypothesis shrinks to
_PARAM_SCALES = (0.05, 0.01, 0.2, 0.5)
_SPECIAL_FRACTIONS = (0.1, 0.5, 1.0)
_MASK_STYLES = ("ones", "padded", "random")
_MASK_NAME = re.compile("mask", re.IGNORECASE)
_DEFAULT_INT_RANGE = (0, 16)
_UNBOUNDED_SPAN = 16  # how far above its lower end an unbounded dim goes without an example

PROFILES: dict[str, settings] = {
    # No `explain` phase: after a failure it re-runs every example under sys.settrace (minutes for a compile).
    "ci": settings(parent=settings.get_profile("default"), max_examples=10, deadline=None, derandomize=True,
                   database=None, phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                   suppress_health_check=[HealthCheck.too_slow]),
    "thorough": settings(parent=settings.get_profile("default"), max_examples=200, deadline=None,
                         suppress_health_check=[HealthCheck.too_slow]),
}


def register_profiles(prefix: str = "crossgraph-") -> None:
    """Register PROFILES with hypothesis as `<prefix>ci` and `<prefix>thorough` (for `settings.load_profile`)."""
    for name, profile in PROFILES.items():
        settings.register_profile(prefix + name, profile)


def seeds() -> SearchStrategy[int]:
    """Seeds for torch.Generator; they shrink towards 0."""
    return st.integers(min_value=0, max_value=2**32 - 1)


def draw(strategy: SearchStrategy[T], n: int, seed: int = 0) -> list[T]:
    """Up to `n` examples of `strategy`, the same ones for the same seed, drawn silently outside any test.

    The first is usually the simplest example (what hypothesis shrinks towards); fewer than `n` come back when
    the strategy has fewer distinct examples.
    """
    drawn: list[T] = []
    if n <= 0:
        return drawn

    @hypothesis_seed(seed)
    @settings(parent=settings.get_profile("default"), max_examples=n, database=None, phases=[Phase.generate],
              deadline=None, derandomize=False, suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet,
              print_blob=False)
    @given(strategy)
    def record(value: T) -> None:
        drawn.append(value)

    record()
    return drawn


# ---- inputs ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _InputSpec:
    """How to draw one input: its shape (ints and sympy expressions), dtype, device, and which values."""

    shape: tuple[int | sympy.Expr, ...]
    dtype: torch.dtype
    device: torch.device
    kind: str  # "float", "int" (in [low, high)) or "mask"
    low: int = 0
    high: int = 0


def inputs(graph: Graph, example_inputs: Sequence[torch.Tensor] | None = None
           ) -> SearchStrategy[tuple[torch.Tensor, ...]]:
    """Tuples of tensors for the graph's user inputs (see the module docstring for what is drawn).

    `example_inputs` (default: the ones the exported program recorded, if any) sets integer ranges, mask
    detection and how far unbounded dims go.
    """
    example = _example(graph, example_inputs)
    index_bounds, dim_caps = bounds.index_bounds(graph)  # one analysis, shared with capture
    nodes = graph.input_nodes()
    specs = [_input_spec(name, node, index_bounds.get(node.name), ex)
             for name, node, ex in zip(graph.input_names, nodes, example or [None] * len(nodes))]
    dims, example_sizes = _dim_ranges(graph, specs, example, dim_caps)
    fallback = {sym: example_sizes.get(sym, low) for sym, (low, _) in dims.items()}
    return _input_tuples(tuple(specs), dims, fallback, _shape_guard(graph) if dims else None)


def _shape_guard(graph: Graph) -> Callable[[list[torch.Tensor]], bool] | None:
    """Whether input shapes pass the program's guards: the relations between sizes torch.export recorded
    beyond the range constraints (ViT's patch grid must match its position table), checked on meta tensors by
    the guard function `ExportedProgram.module()` installs. None where this torch has none."""
    guards = getattr(graph.module(), "_guards_fn", None)
    if guards is None:
        return None

    def ok(tensors: list[torch.Tensor]) -> bool:
        try:
            guards(*pytree.tree_leaves((tensors, graph.constant_kwargs)))
        except AssertionError:
            return False
        return True

    return ok


def _shape(spec: _InputSpec, sizes: dict[sympy.Symbol, int]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else int(d.subs(sizes)) for d in spec.shape)


@st.composite
def _input_tuples(draw: Callable[[SearchStrategy[Any]], Any], specs: tuple[_InputSpec, ...],
                  dims: dict[sympy.Symbol, tuple[int, int]], fallback: dict[sympy.Symbol, int],
                  guard: Callable[[list[torch.Tensor]], bool] | None) -> tuple[torch.Tensor, ...]:
    """Sizes drawn from `dims` until the program's guards accept them, at most _SIZE_TRIES times, else the
    example's (so only values vary, rather than hypothesis filtering out most draws)."""
    for _ in range(_SIZE_TRIES):
        sizes = {sym: draw(st.integers(lo, hi)) for sym, (lo, hi) in dims.items()}
        if guard is None or guard([torch.empty(_shape(spec, sizes), dtype=spec.dtype, device="meta")
                                   for spec in specs]):
            break
    else:
        sizes = fallback
    gen = torch.Generator().manual_seed(draw(seeds()))
    tensors = []
    for spec in specs:
        shape = _shape(spec, sizes)
        if spec.kind == "float":
            large = _large(spec.dtype)
            scale = draw(st.sampled_from([s for s in _INPUT_SCALES if 4 * s <= large]))
            dist = draw(st.sampled_from(_DISTRIBUTIONS))
            fraction = draw(st.sampled_from(_SPECIAL_FRACTIONS)) if dist == "special" else 0.0
            tensor = _floats(gen, shape, spec.dtype, dist, scale, fraction, large)
        elif spec.kind == "mask":
            tensor = _mask(gen, shape, draw(st.sampled_from(_MASK_STYLES))).to(spec.dtype)
        else:
            tensor = torch.randint(spec.low, spec.high, shape, generator=gen).to(spec.dtype)
        tensors.append(tensor.to(spec.device))
    return tuple(tensors)


def _floats(gen: torch.Generator, shape: tuple[int, ...], dtype: torch.dtype, dist: str, scale: float,
            fraction: float, large: float) -> torch.Tensor:
    work = torch.float64 if dtype == torch.float64 else torch.float32
    if dist == "uniform":
        values = (torch.rand(shape, generator=gen, dtype=work) * 2 - 1) * scale
    else:
        values = torch.randn(shape, generator=gen, dtype=work) * scale
    if dist == "special":
        specials = torch.tensor([0.0, 1.0, -1.0, large, -large], dtype=work)
        picks = specials[torch.randint(0, len(specials), shape, generator=gen)]
        values = torch.where(torch.rand(shape, generator=gen, dtype=work) < fraction, picks, values)
    return values.to(dtype)


def _large(dtype: torch.dtype) -> float:
    """A large magnitude whose fourth power still fits `dtype` (1e4 unless the dtype is narrower)."""
    return min(1e4, torch.finfo(dtype).max ** 0.25)


def _mask(gen: torch.Generator, shape: tuple[int, ...], style: str) -> torch.Tensor:
    """0/1 (int64) with at least one 1 along the last dim of every row."""
    if not shape or not shape[-1] or style == "ones":
        return torch.ones(shape, dtype=torch.int64)
    length = shape[-1]
    if style == "padded":
        lengths = torch.randint(1, length + 1, shape[:-1] + (1,), generator=gen)
        return (torch.arange(length) < lengths).long()
    keep = torch.randint(0, length, shape[:-1] + (1,), generator=gen)
    mask = torch.randint(0, 2, shape, generator=gen)
    return mask.scatter(-1, keep, 1)


def _example(graph: Graph, given_inputs: Sequence[torch.Tensor] | None) -> list[torch.Tensor] | None:
    """The example inputs to learn ranges from: the given ones, else the program's recorded ones, if usable."""
    count = len(graph.input_nodes())
    if given_inputs is not None:
        found = list(given_inputs)
        if len(found) != count or not all(isinstance(t, torch.Tensor) for t in found):
            raise InputError(f"example_inputs has {len(found)} entries for {count} graph inputs "
                             f"({', '.join(graph.input_names)}); give one tensor per input")
        return found
    recorded = graph.exported.example_inputs
    leaves = [t for t in pytree.tree_leaves(recorded[0]) if isinstance(t, torch.Tensor)] if recorded else []
    return leaves if len(leaves) == count else None


def _input_spec(name: str, node: Node, index_bound: int | None, example: torch.Tensor | None) -> _InputSpec:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor):
        raise InputError(f"input {name} is not a tensor ({type(val).__name__}); cannot draw values for it")
    shape = tuple(s.node.expr if isinstance(s, torch.SymInt) else int(s) for s in val.shape)
    spec = functools.partial(_InputSpec, shape, val.dtype, val.device)
    if val.dtype.is_floating_point:
        return spec(kind="float")
    if val.dtype.is_complex:
        raise InputError(f"input {name} is {val.dtype}; crossgraph draws real floats, integers and masks only")
    if val.dtype == torch.bool or _MASK_NAME.search(name):
        return spec(kind="mask")
    if index_bound is not None:
        return spec(kind="int", low=0, high=index_bound)
    if example is not None and example.numel():
        low, high = int(example.min()), int(example.max())
        if low >= 0 and high <= 1:
            return spec(kind="mask")
        return spec(kind="int", low=low, high=high + 1)
    return spec(kind="int", low=_DEFAULT_INT_RANGE[0], high=_DEFAULT_INT_RANGE[1])


def _dim_ranges(graph: Graph, specs: list[_InputSpec], example: list[torch.Tensor] | None,
                caps: dict[sympy.Symbol, int]) -> tuple[dict[sympy.Symbol, tuple[int, int]], dict[sympy.Symbol, int]]:
    """[lowest, highest] size of each symbol in the input shapes, from the program's range constraints, and
    each symbol's size in the example."""
    example_sizes: dict[sympy.Symbol, int] = {}
    symbols: set[sympy.Symbol] = set()
    for i, spec in enumerate(specs):
        for d, size in enumerate(spec.shape):
            if isinstance(size, sympy.Expr):
                symbols |= size.free_symbols
                if isinstance(size, sympy.Symbol) and example is not None and d < example[i].dim():
                    example_sizes.setdefault(size, example[i].shape[d])
    ranges = {}
    for sym in sorted(symbols, key=str):
        vr = graph.exported.range_constraints.get(sym)
        low = int(vr.lower) if vr is not None and isinstance(vr.lower, sympy.Integer) else 2
        high = int(vr.upper) if vr is not None and isinstance(vr.upper, sympy.Integer) else math.inf
        if sym in example_sizes:
            high = min(high, max(2 * example_sizes[sym], low))
        else:
            high = min(high, low + _UNBOUNDED_SPAN)
        high = max(low, min(high, caps.get(sym, high)))
        ranges[sym] = (low, int(high))
    return ranges, example_sizes


# ---- parameters --------------------------------------------------------------------------------------------

def perturbed_parameters(graph: Graph, scale: float | None = None) -> SearchStrategy[dict[str, torch.Tensor]]:
    """The graph's state dict with every float parameter moved by seeded normal noise; buffers unchanged.

    The noise of a tensor has standard deviation `scale` times the tensor's RMS (the RMS of all float
    parameters for an all-zero tensor, so zero biases move too); `scale` is drawn from 0.01..0.5 unless given.
    Lifted constants are not included: perturb before running passes, since constants folded from weights
    (`constant_folding`) are not recomputed.
    """
    if scale is not None and not scale >= 0:
        raise ValueError(f"scale must be >= 0, got {scale}")
    state = dict(graph.exported.state_dict)
    names = [n for n in graph.exported.graph_signature.parameters if state[n].is_floating_point()]
    floats = [state[n].detach().cpu().to(torch.promote_types(state[n].dtype, torch.float32)) for n in names]
    total = sum(t.numel() for t in floats)
    fallback = math.sqrt(sum(float(t.square().sum()) for t in floats) / total) if total else 1.0
    scales = st.just(float(scale)) if scale is not None else st.sampled_from(_PARAM_SCALES)

    def perturb(seed: int, relative: float) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        out = {name: tensor.detach() for name, tensor in state.items()}
        for name, values in zip(names, floats):
            rms = float(values.square().mean().sqrt()) if values.numel() else 0.0
            noise = torch.randn(values.shape, generator=gen, dtype=values.dtype) * (relative * (rms or fallback or 1.0))
            out[name] = (values + noise).to(dtype=state[name].dtype, device=state[name].device)
        return out

    return st.builds(perturb, seeds(), scales)


def with_parameters(graph: Graph, params: Mapping[str, torch.Tensor]) -> Graph:
    """A copy of `graph` whose program uses `params` (state-dict or constant names; others keep their values).

    Each tensor must match the shape and dtype it replaces; `graph` itself is unchanged.
    """
    copy = program.copy_graph(graph)
    ep = copy.exported
    for name, tensor in params.items():
        table = ep.state_dict if name in ep.state_dict else ep.constants if name in ep.constants else None
        if table is None:
            raise InputError(f"{graph.name} has no parameter, buffer or constant named {name!r}")
        old = table[name]
        if tuple(tensor.shape) != tuple(old.shape) or tensor.dtype != old.dtype:
            raise InputError(f"parameter {name!r} is {old.dtype}{list(old.shape)}; got "
                             f"{tensor.dtype}{list(tensor.shape)}")
        new = tensor.detach().to(old.device)
        table[name] = torch.nn.Parameter(new, requires_grad=old.requires_grad) \
            if isinstance(old, torch.nn.Parameter) else new
    return copy

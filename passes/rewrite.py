"""Pattern rewriting for fusion passes: replace every match of a subgraph with another, both plain functions.

Patterns and replacements are traced the way `crossgraph.graphs.capture` traces a model (torch.export, then the
same core-ATen decompositions), so `lambda x: x * 2` matches what `x * 2` in model code was captured as.
Matching is torch.fx's SubgraphMatcher (through `replace_pattern_with_filters`): a match's inner values must
have no users outside it, and literal arguments (sizes, scalars) must be equal unless `ignore_literals`.
Metadata asserts (`aten._assert_tensor_metadata`, which `.to(dtype)` leaves) check rather than compute: traced
patterns drop them, and `drop_proven_asserts` drops those of a graph whose fake values prove them, where they
would hold a match's inner values in place.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable, Sequence

import torch
from torch.fx import Node
from torch.fx.subgraph_rewriter import replace_pattern_with_filters

from crossgraph.graphs import Graph
from crossgraph.graphs.capture import decomposition_table
from crossgraph.passes import fake, program

MatchFilter = Callable[[Any, torch.fx.Graph, torch.fx.Graph], bool]
"""(match, graph, pattern graph) -> keep the match? `match.nodes_map` maps pattern nodes to graph nodes."""

_METADATA_ASSERT = torch.ops.aten._assert_tensor_metadata.default
FLATTENS = frozenset({torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default,
                      torch.ops.aten.reshape.default})
"""The reshapes torch.export writes around an mm: x flattened to [M, K] before it, the result back to [..., N]."""


class _AsModule(torch.nn.Module):
    """A plain function as the module torch.export wants."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *inputs: torch.Tensor) -> Any:
        return self.fn(*inputs)


def trace_pattern(fn: Callable[..., Any], example_inputs: Sequence[torch.Tensor]) -> torch.fx.Graph:
    """`fn` as a core-ATen fx graph, traced like capture() traces model code (cached by fn, shapes and dtypes)."""
    return _trace(fn, tuple((tuple(t.shape), t.dtype) for t in example_inputs))


@functools.lru_cache(maxsize=256)
def _trace(fn: Callable[..., Any], specs: tuple[tuple[tuple[int, ...], torch.dtype], ...]) -> torch.fx.Graph:
    inputs = tuple(torch.zeros(shape, dtype=dtype) for shape, dtype in specs)
    exported = torch.export.export(_AsModule(fn), inputs, strict=False)
    graph = exported.run_decompositions(decomposition_table()).graph
    for node in graph.find_nodes(op="call_function", target=_METADATA_ASSERT):
        graph.erase_node(node)
    return graph


def drop_proven_asserts(graph: Graph, nodes: Iterable[Node]) -> None:
    """Erase the metadata asserts on `nodes` whose dtype, device and layout their meta["val"] already proves."""
    for node in nodes:
        val = node.meta.get("val")
        for user in list(node.users):
            if user.target != _METADATA_ASSERT or not isinstance(val, torch.Tensor):
                continue
            _, size, stride, dtype = (*user.args, None, None, None)[:4]
            device, layout = user.kwargs.get("device"), user.kwargs.get("layout")
            if (size is None and stride is None and dtype in (None, val.dtype)
                    and device in (None, val.device) and layout in (None, val.layout)):
                graph.fx.erase_node(user)


class _GraphOnly:
    """What fx's rewriter uses of a GraphModule, its graph, without regenerating the module's code after every
    pattern: the Pass running this regenerates it once, when the pass returns."""

    def __init__(self, graph: torch.fx.Graph) -> None:
        self.graph = graph

    def recompile(self) -> None:
        pass


def inputs_are_nodes(match: Any, graph: torch.fx.Graph, pattern: torch.fx.Graph) -> bool:
    """A match filter: every input of the pattern matched a node, not a literal (fx lets a pattern input match
    a number, such as the 1.0 of `x + 1.0`, which a replacement taking a tensor could not use)."""
    return all(isinstance(n, Node) for n in match.placeholder_nodes)


def replace_pattern(graph: Graph, pattern: Callable[..., Any], replacement: Callable[..., Any],
                    example_inputs: Sequence[torch.Tensor], *, match_filters: Sequence[MatchFilter] = (),
                    ignore_literals: bool = False) -> int:
    """Replace every match of `pattern` in `graph` (in place) by `replacement`; returns how many were replaced.

    Both functions take the same tensors, traced at `example_inputs`. Replacement nodes get fresh meta["val"]
    in the graph's fake mode, and the provenance and annotations of the node the pattern's output matched.
    Call it inside a pass: the graph module's code is regenerated when the pass returns, not here.
    """
    replaced = replace_pattern_with_filters(
        _GraphOnly(graph.fx), trace_pattern(pattern, example_inputs),
        trace_pattern(replacement, example_inputs), list(match_filters), ignore_literals)
    new_nodes: set[Node] = set()
    for match in replaced:
        source = match.nodes_map[match.anchor]
        for node in match.replacements:
            node.meta = {}  # drop what tracing the replacement put there: its own stack trace, example shapes
            program.carry_provenance(source, node)
            new_nodes.add(node)
    fake.set_vals(graph, new_nodes)
    return len(replaced)

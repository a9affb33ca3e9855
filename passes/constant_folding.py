"""constant_folding: precompute what depends only on weights, and store it as a new lifted constant.

    %permute = aten.permute.default(%p_w, [1, 0])          %c_folded_permute = input  (w transposed, stored)
    %y = aten.addmm.default(%p_b, %x, %permute)     ->     %y = aten.addmm.default(%p_b, %x, %c_folded_permute)

A node folds when it is pure and deterministic, all its inputs are parameters, buffers or constants that no
output mutates (or nodes that fold), and its shape is static; values that depend on user inputs, shapes of a
dynamic capture included, never fold. Only the boundary of a folded subgraph is stored, as a contiguous
CONSTANT_TENSOR (signature and `constants`, so the program still runs, saves and loads), and only when it reads
some weight and is no larger than the weights it reads (a weight broadcast to the batch stays a broadcast).
A metadata assertion (`_assert_tensor_metadata`, from `.to(dtype)`) on a folded value is checked once, here,
and removed with it. The weights themselves stay for their other users; `dead_code` drops the weights nothing
reads any more. So a value that only re-lays out one weight (views, transposes, copies) is not folded while the
graph still reads that weight when it runs: both would be stored. GPT-2's tied wte is the embedding table and,
transposed, the LM head; folding the transpose added a second 147 MiB copy to every saved GPT-2 small file.
Values that compute (a cast, a merged LoRA weight, a scaled or concatenated weight) fold regardless.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import Node
from torch.fx.experimental.symbolic_shapes import has_free_symbols

from crossgraph.graphs import Graph
from crossgraph.passes import program
from crossgraph.passes.registry import register

aten = torch.ops.aten

# Assertions about a value's dtype/device/layout: on a folded value they are checked once, at folding time.
_METADATA_CHECKS = (aten._assert_tensor_metadata.default,)

_RELAYOUTS = frozenset({aten.permute.default, aten.view.default, aten.expand.default, aten.clone.default,
                        aten.alias.default, aten.unsqueeze.default, aten.squeeze.dims, aten.slice.Tensor,
                        aten.select.int})
"""Core-ATen ops that move or view a tensor's elements without computing new ones (what t, transpose, reshape,
contiguous and indexing by ranges are captured as): their result is (part of) the weight stored again."""


def _foldable_op(node: Node) -> bool:
    """Pure, deterministic ATen ops (and tuple indexing); never ops reading uninitialized memory."""
    if node.target is operator.getitem:
        return True
    return (isinstance(node.target, torch._ops.OpOverload) and not node.is_impure()
            and not node.target._opname.startswith("empty"))


def _find_folds(graph: Graph, weight_numel: dict[Node, int]) -> tuple[set[Node], list[Node]]:
    """The nodes that fold and the metadata checks on them; fills in how many weight elements each fold reads."""
    folds: set[Node] = set()
    checks: list[Node] = []
    for node in graph.fx.nodes:
        val = node.meta.get("val")
        constant_inputs = all(i in weight_numel for i in node.all_input_nodes)
        if node.target in _METADATA_CHECKS and node.all_input_nodes and constant_inputs:
            checks.append(node)
        elif (node.op == "call_function" and val is not None and _foldable_op(node) and constant_inputs
                and not has_free_symbols(val)):
            weight_numel[node] = sum(weight_numel[i] for i in node.all_input_nodes)
            folds.add(node)
    return folds, checks


def _relayout_source(node: Node, constants: dict[Node, torch.Tensor]) -> Node | None:
    """The weight that `node` only re-lays out (through a chain of `_RELAYOUTS`), or None when `node` computes."""
    while node not in constants:
        if node.target not in _RELAYOUTS or not isinstance(node.args[0], Node):
            return None
        node = node.args[0]
    return node


def _runs(node: Node, stored: set[Node], folds: set[Node], checks: set[Node], memo: dict[Node, bool]) -> bool:
    """Whether `node` still runs once `stored` are constants: it does not fold, or it folds, is not stored, and
    something that runs reads it. (Checks of folded values are removed.)"""
    if node in checks or node in stored:
        return False
    if node not in folds:
        return True
    if node not in memo:
        memo[node] = any(_runs(user, stored, folds, checks, memo) for user in node.users)
    return memo[node]


def _single_copies(boundary: list[Node], constants: dict[Node, torch.Tensor], folds: set[Node],
                   checks: set[Node]) -> list[Node]:
    """`boundary` less each re-layout of a weight that the graph would still read when it runs (the other
    re-layouts counted as not stored): storing it would store the weight twice."""
    sources = {node: _relayout_source(node, constants) for node in boundary}
    computed = {node for node, source in sources.items() if source is None}
    return [node for node, source in sources.items()
            if source is None or not any(_runs(user, computed | {node}, folds, checks, {}) for user in source.users)]


def _run(graph: Graph, nodes: set[Node], values: dict[Node, torch.Tensor]) -> None:
    """Evaluate `nodes` on real tensors, in graph order, adding their results to `values`."""
    with torch.no_grad():
        for node in graph.fx.nodes:
            if node in nodes:
                args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), values.__getitem__)
                values[node] = node.target(*args, **kwargs)


@register("constant_folding", "precomputes values that depend only on weights (a transposed weight, a cast)")
def constant_folding(graph: Graph) -> Graph:
    """Evaluate the weight-only subgraphs once and replace their boundary nodes with constants."""
    constants = program.constant_inputs(graph)
    weight_numel = {node: t.numel() for node, t in constants.items()}
    folds, checks = _find_folds(graph, weight_numel)
    settled = folds | set(checks)
    boundary = [n for n in graph.fx.nodes if n in folds and any(u not in settled for u in n.users)
                and isinstance(n.meta["val"], torch.Tensor) and 0 < n.meta["val"].numel() <= weight_numel[n]
                and all(u.op != "output" for u in n.users)]
    boundary = _single_copies(boundary, constants, folds, set(checks))
    if not boundary:
        return graph
    needed = set(boundary) | {i for c in checks for i in c.all_input_nodes if i in folds}
    for node in reversed(graph.fx.nodes):
        if node in folds and any(u in needed for u in node.users):
            needed.add(node)
    values: dict[Node, torch.Tensor] = dict(constants)
    _run(graph, needed, values)
    _run(graph, set(checks), values)  # raises, naming the assertion, if a folded value is not as the graph says
    for check in checks:
        graph.fx.erase_node(check)
    for node in boundary:
        tensor = values[node].detach().clone(memory_format=torch.contiguous_format)
        constant = program.add_constant(graph, f"folded_{node.name}", tensor)
        program.carry_provenance(node, constant)
        node.replace_all_uses_with(constant)
    for node in reversed(graph.fx.nodes):
        if node in folds and not node.users:
            graph.fx.erase_node(node)
    return graph

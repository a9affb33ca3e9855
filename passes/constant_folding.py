"""constant_folding: precompute what depends only on weights, and store it as a new lifted constant.

    %permute = aten.permute.default(%p_w, [1, 0])          %c_folded_permute = input  (w transposed, stored)
    %y = aten.addmm.default(%p_b, %x, %permute)     ->     %y = aten.addmm.default(%p_b, %x, %c_folded_permute)

A node folds when it is pure and deterministic, all its inputs are parameters, buffers or constants that no
output mutates (or nodes that fold), and its shape is static; values that depend on user inputs, shapes of a
dynamic capture included, never fold. Only the boundary of a folded subgraph is stored, as a contiguous
CONSTANT_TENSOR (signature and `constants`, so the program still runs, saves and loads), and only when it reads
some weight and is no larger than the weights it reads (a weight broadcast to the batch stays a broadcast).
A metadata assertion (`_assert_tensor_metadata`, from `.to(dtype)`) on a folded value is checked once, here,
and removed with it. The weights themselves stay: a tied weight (GPT-2's wte: embedding, and transposed, the
LM head) still feeds its other users; `dead_code` drops the weights nothing reads any more.
"""

from __future__ import annotations

import operator

import torch
from torch.fx import Node
from torch.fx.experimental.symbolic_shapes import has_free_symbols

from crossgraph.graphs import Graph
from crossgraph.passes import program
from crossgraph.passes.registry import register

# Assertions about a value's dtype/device/layout: on a folded value they are checked once, at folding time.
_METADATA_CHECKS = (torch.ops.aten._assert_tensor_metadata.default,)


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

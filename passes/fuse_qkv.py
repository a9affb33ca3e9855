"""fuse_qkv: linear projections of the same input become one matmul against the concatenated weights, split.

    %q = aten.mm.default(%x, %wq_t)                    %w = aten.cat.default([%wq_t, %wk_t, %wv_t], 1)
    %k = aten.mm.default(%x, %wk_t)          ->        %qkv = aten.mm.default(%x, %w)
    %v = aten.mm.default(%x, %wv_t)                    %split = aten.split_with_sizes.default(%qkv, [32, 16, 16], 1)
                                                       %q, %k, %v = getitem(%split, 0), ...(1), ...(2)

Two or more mm (or all addmm, biases concatenated the same way) whose weight operands are parameters, or
transposes of them, and whose inputs are the same value (one node, or equal-shaped flattening views of one node,
as capture writes `F.linear` of a 3-d input) fuse: Llama's q/k/v and gate/up projections, BERT's query/key/
value. The concatenated weight is built as graph nodes from the parameters; constant_folding folds it into one
constant. Run fold_lora first: a LoRA adapter's first matmul reads the same input as its base layer.
"""

from __future__ import annotations

from operator import getitem

import torch
from torch.fx import Node

from crossgraph.graphs import Graph
from crossgraph.passes import fake, program
from crossgraph.passes.registry import register
from crossgraph.passes.rewrite import FLATTENS

aten = torch.ops.aten


def _weight_source(node: Node, constants: dict[Node, torch.Tensor], dim: int) -> bool:
    """A weight operand of rank `dim`: a parameter/buffer/constant, or a transpose of one."""
    if node.target == aten.permute.default:
        node = node.args[0]
    return node in constants and constants[node].dim() == dim


def _copy_weight(graph: Graph, node: Node) -> Node:
    """The operand, re-created at the insertion point when it is a transpose (it may come later in the graph)."""
    return node if node.op == "placeholder" else graph.fx.call_function(node.target, node.args)


def _key(node: Node, constants: dict[Node, torch.Tensor]) -> tuple[Node, bool] | None:
    """(the input the projection reads, through a flattening view; whether it has a bias), or None."""
    if node.kwargs:
        return None
    bias = node.target == aten.addmm.default
    x, weight = node.args[-2], node.args[-1]
    if not (_weight_source(weight, constants, 2) and (not bias or _weight_source(node.args[0], constants, 1))):
        return None
    source = x.args[0] if x.target in FLATTENS else x
    return source, bias


def _groups(graph: Graph) -> list[list[Node]]:
    """Projections reading the same value, two or more, in graph order."""
    constants = program.constant_inputs(graph)
    groups: dict[tuple[Node, bool], list[Node]] = {}
    for node in graph.fx.nodes:
        if node.op == "call_function" and node.target in (aten.mm.default, aten.addmm.default):
            key = _key(node, constants)
            if key is not None:
                groups.setdefault(key, []).append(node)
    found = []
    for members in groups.values():
        first = members[0].args[-2].meta["val"]
        same = [m for m in members if fake.same_meta(m.args[-2].meta["val"], first)
                and m.meta["val"].dtype == members[0].meta["val"].dtype]
        if len(same) > 1:
            found.append(same)
    return found


def _fuse(graph: Graph, members: list[Node]) -> set[Node]:
    """Replace the projections by one matmul split into their outputs; returns the new nodes."""
    first, bias = members[0], members[0].target == aten.addmm.default
    widths = [m.meta["val"].shape[1] for m in members]
    with graph.fx.inserting_before(first):
        weight = graph.fx.call_function(aten.cat.default, ([_copy_weight(graph, m.args[-1]) for m in members], 1))
        args = (first.args[-2], weight)
        if bias:
            args = (graph.fx.call_function(aten.cat.default, ([_copy_weight(graph, m.args[0]) for m in members],)),
                    *args)
        fused = graph.fx.call_function(first.target, args)
        split = graph.fx.call_function(aten.split_with_sizes.default, (fused, widths, 1))
        pieces = [graph.fx.call_function(getitem, (split, i)) for i in range(len(members))]
    new_nodes = {split, fused, *fused.all_input_nodes, *weight.all_input_nodes, *pieces} - {first.args[-2]}
    new_nodes = {n for n in new_nodes if n.op == "call_function"}
    for node in new_nodes - set(pieces):
        program.carry_provenance(first, node)
    for member, piece in zip(members, pieces):
        program.carry_provenance(member, piece)
        member.replace_all_uses_with(piece)
        program.erase_unused(graph, member)  # and its own flattening view and weight transpose
    return new_nodes


@register("fuse_qkv", "fuses linear projections of one input (q/k/v, gate/up) into one matmul and a split")
def fuse_qkv(graph: Graph) -> Graph:
    """Fuse every group of projections that read the same value."""
    new_nodes: set[Node] = set()
    for members in _groups(graph):
        new_nodes |= _fuse(graph, members)
    fake.set_vals(graph, new_nodes)
    return graph

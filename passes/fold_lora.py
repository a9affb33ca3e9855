"""fold_lora: a LoRA adapter beside a linear layer is merged into the layer's weight.

    %base = aten.addmm.default(%b, %x, %wt)                   %ab = aten.mm.default(%at, %bt)
    %down = aten.mm.default(%x, %at)                          %s = aten.mul.Tensor(%ab, 0.5)
    %up = aten.mm.default(%down, %bt)                  ->     %merged = aten.add.Tensor(%wt, %s)
    %scaled = aten.mul.Tensor(%up, 0.5)                       %base = aten.addmm.default(%b, %x, %merged)
    %y = aten.add.Tensor(%base, %scaled)                      (uses of %y read %base)

(%wt, %at, %bt are the weights as the matmuls read them, W^T, A^T, B^T; views that flatten a 3-d input to 2-d
and back are looked through). x W^T + s (x A^T) B^T = x (W^T + s A^T B^T), so the adapter's two matmuls leave
the graph. The merged weight is built from the parameters as graph nodes, which constant_folding folds into
one constant for serving; the adapter's parameters are then unused, and dead_code drops them.
Run it before fuse_qkv, which would otherwise fuse the adapter's first matmul with the base layer's.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.fx import Node

from crossgraph.graphs import Graph
from crossgraph.passes import fake, program
from crossgraph.passes.registry import register
from crossgraph.passes.rewrite import FLATTENS

aten = torch.ops.aten


class _Adapter(NamedTuple):
    base: Node        # the base layer's mm/addmm, whose weight operand becomes the merged weight
    down: Node        # x A^T
    up: Node          # (x A^T) B^T
    scale: float
    lora: Node        # the add's operand holding the (scaled) adapter output


def _unview(node: Node) -> Node:
    """The input of a view/reshape, or the node itself."""
    return node.args[0] if node.target in FLATTENS and isinstance(node.args[0], Node) else node


def _matmul(node: Node) -> Node | None:
    """The mm/addmm (unit alpha and beta) that `node` is, or is a view of."""
    mm = _unview(node)
    return mm if mm.target in (aten.mm.default, aten.addmm.default) and not mm.kwargs else None


def _same_shape(a: Node, b: Node) -> bool:
    return fake.same_meta(a.meta.get("val"), b.meta.get("val"))


def _weight(node: Node, constants: dict[Node, torch.Tensor]) -> bool:
    """A 2-d weight operand: a parameter/buffer/constant, or a transpose of one."""
    if node.target == aten.permute.default:
        node = node.args[0]
    return node in constants and constants[node].dim() == 2


def _copy_weight(graph: Graph, node: Node) -> Node:
    """The weight operand, re-created at the insertion point when it is a transpose (it may come later)."""
    return node if node.op == "placeholder" else graph.fx.call_function(node.target, node.args)


def _adapter(add: Node, base_out: Node, lora: Node, constants: dict[Node, torch.Tensor]) -> _Adapter | None:
    """The adapter if `add` is base_out + lora with base_out = linear(x) and lora = linear(linear(x)) [* s]."""
    scaled, scale = lora, 1.0
    if lora.target == aten.mul.Tensor and isinstance(lora.args[1], (int, float)) and not lora.kwargs:
        scaled, scale = lora.args[0], float(lora.args[1])
    base, up = _matmul(base_out), _matmul(scaled)
    if base is None or up is None or up.target != aten.mm.default or base is up:
        return None
    down = _matmul(_unview(up.args[0]))  # x A^T, viewed back to 3-d and flat again in between
    if down is None or down.target != aten.mm.default:
        return None
    x, x_down = base.args[-2], down.args[0]
    same_input = x is x_down or (_unview(x) is _unview(x_down) and _same_shape(x, x_down))
    weights = (base.args[-1], down.args[1], up.args[1])
    if not (same_input and _same_shape(down, up.args[0]) and _same_shape(base, up)
            and _same_shape(base_out, add) and _same_shape(scaled, add)
            and all(_weight(w, constants) for w in weights)):
        return None
    single_use = len(base.users) == 1 and (base_out is base or len(base_out.users) == 1)
    return _Adapter(base, down, up, scale, lora) if single_use else None


@register("fold_lora", "merges LoRA adapters (x A^T B^T * s beside x W^T) into the layer weight W + s B A")
def fold_lora(graph: Graph) -> Graph:
    """Replace base(x) + s * up(down(x)) by base(x) with weight W^T + s A^T B^T."""
    constants = program.constant_inputs(graph)
    new_nodes: set[Node] = set()
    for add in list(graph.fx.find_nodes(op="call_function", target=aten.add.Tensor)):
        if add.kwargs or not all(isinstance(a, Node) for a in add.args):
            continue
        found = _adapter(add, add.args[0], add.args[1], constants) or _adapter(add, add.args[1], add.args[0],
                                                                             constants)
        if found is None:
            continue
        weight = found.base.args[-1]
        with graph.fx.inserting_before(found.base):
            delta = graph.fx.call_function(aten.mm.default, (_copy_weight(graph, found.down.args[1]),
                                                             _copy_weight(graph, found.up.args[1])))
            scaled = graph.fx.call_function(aten.mul.Tensor, (delta, found.scale))
            merged = graph.fx.call_function(aten.add.Tensor, (weight, scaled))
        created = {n for n in (delta, *delta.all_input_nodes, scaled, merged) if n.op == "call_function"}
        for node in created:
            program.carry_provenance(found.base, node)
        found.base.replace_input_with(weight, merged)
        base_out = add.args[0] if found.lora is add.args[1] else add.args[1]
        add.replace_all_uses_with(base_out)
        graph.fx.erase_node(add)
        program.erase_unused(graph, found.lora)
        new_nodes |= created
    fake.set_vals(graph, new_nodes)
    return graph

"""cse: common subexpression elimination over pure call_function nodes.

    %a = aten.arange.start_step(0, 8)             %a = aten.arange.start_step(0, 8)
    %b = aten.arange.start_step(0, 8)      ->     %c = aten.sub.Tensor(%a, %a)
    %c = aten.sub.Tensor(%a, %b)

Two nodes merge when they call the same op on the same input nodes with equal literals (an int 1, a float 1.0
and True stay apart, as do 0.0 and -0.0). Random ops, ops with side effects and higher-order ops never merge,
and a graph holding any in-place op is left alone: merging two values could make a mutation of one show in
the other.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.fx import Node

from crossgraph.graphs import Graph
from crossgraph.passes.registry import register


class _Unkeyable(Exception):
    """A literal argument with no value identity (a tensor, a symbolic number): the node never merges."""


def _freeze(value: Any) -> Any:
    """A hashable key for an argument that tells apart values ops treat differently."""
    if isinstance(value, Node):
        return value
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, tuple(_freeze(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, _freeze(v)) for k, v in sorted(value.items())))
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, (torch.Tensor, torch.SymInt, torch.SymFloat, torch.SymBool)):
        raise _Unkeyable
    return (type(value).__name__, value)


def _mutates(node: Node) -> bool:
    return isinstance(node.target, torch._ops.OpOverload) and node.target._schema.is_mutable


@register("cse", "merges pure nodes that compute the same op on the same inputs")
def cse(graph: Graph) -> Graph:
    """Replace each repeat of an earlier pure computation with the earlier node."""
    if any(_mutates(n) for n in graph.fx.nodes):
        return graph
    seen: dict[Any, Node] = {}
    for node in list(graph.fx.nodes):
        if (node.op != "call_function" or node.is_impure()
                or isinstance(node.target, torch._ops.HigherOrderOperator)):
            continue
        try:
            first = seen.setdefault((node.target, _freeze(node.args), _freeze(node.kwargs)), node)
        except (_Unkeyable, TypeError):  # TypeError: an unhashable literal
            continue
        if first is not node:
            node.replace_all_uses_with(first)
            graph.fx.erase_node(node)
    return graph

"""noop_removal: remove views, copies and casts that return their input unchanged.

    %y = aten.view.default(%x, [2, 8])          # %x is already [2, 8]
    %z = aten.relu.default(%y)           ->     %z = aten.relu.default(%x)

An op is a no-op when its meta["val"] provably has the input's shape, strides, dtype, device and layout
(symbolic sizes are compared without guards, so `view(x, [s0, 8])` on an `[s0, 8]` input goes, on `[s1, 8]`
stays): view / reshape / _unsafe_view / expand to the same shape, permute by the identity, transpose of a dim
with itself, slice over a whole dim, alias, and clone / _to_copy / convert_element_type that change nothing.
A copy stays when it is a graph output or feeds an in-place op, and a view stays when it would make an output
return an input.
"""

from __future__ import annotations

import torch
from torch.fx import Node

from crossgraph.graphs import Graph
from crossgraph.passes import fake
from crossgraph.passes.registry import register

aten, prims = torch.ops.aten, torch.ops.prims
_VIEWS = {aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.expand.default,
          aten.permute.default, aten.transpose.int, aten.slice.Tensor, aten.alias.default}
_COPIES = {aten.clone.default, aten._to_copy.default, prims.convert_element_type.default}


def _kept_for_aliasing(node: Node, source: Node) -> bool:
    """Whether removing `node` could make a graph output alias an input or another value, or expose a mutation."""
    to_output = any(u.op == "output" for u in node.users)
    if node.target in _COPIES:
        return to_output or any(u.op == "call_function" and u.is_impure() for u in node.users)
    return to_output and source.op == "placeholder"


@register("noop_removal", "removes views, copies and casts that return their input unchanged")
def noop_removal(graph: Graph) -> Graph:
    """Replace each no-op's uses with its input and erase it."""
    for node in list(graph.fx.nodes):
        if node.op != "call_function" or (node.target not in _VIEWS and node.target not in _COPIES):
            continue
        source, val = node.args[0], node.meta.get("val")
        if (isinstance(source, Node) and isinstance(val, torch.Tensor)
                and fake.same_meta(source.meta.get("val"), val, layout=True) and not _kept_for_aliasing(node, source)):
            node.replace_all_uses_with(source)
            graph.fx.erase_node(node)
    return graph

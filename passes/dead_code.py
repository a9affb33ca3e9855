"""dead_code: remove nodes whose results nobody uses, then parameters and constants nothing reads.

    %a = aten.add.Tensor(%x, 1)        # no users
    %b = aten.mul.Tensor(%x, 2)          ->     %b = aten.mul.Tensor(%x, 2)
    return (%b,)                                return (%b,)

Nodes with side effects (asserts, in-place ops, random ops, whose RNG draws later ops depend on) stay, as do
outputs. A parameter, buffer or lifted constant whose placeholder has no users leaves the signature and the
state dict, unless an output mutates it or carries its gradient; user inputs always stay.
"""

from __future__ import annotations

from crossgraph.graphs import Graph
from crossgraph.passes import program
from crossgraph.passes.registry import register

@register("dead_code", "removes nodes whose results nobody uses, and weights nothing reads")
def dead_code(graph: Graph) -> Graph:
    """fx dead-code elimination (impure nodes kept), then the unused lifted state."""
    graph.fx.eliminate_dead_code()
    signature = graph.exported.graph_signature
    written = {s.target for s in signature.output_specs if s.target is not None}
    unused = [node for node, spec in zip(program.placeholders(graph), signature.input_specs)
              if not node.users and spec.kind in program.STATE_KINDS and spec.target not in written]
    program.remove_inputs(graph, unused)
    return graph

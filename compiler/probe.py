"""Probe graphs: a Graph that also returns chosen intermediate values, so one run of a lowered artifact shows
what the target computed at those nodes (how `localize` reads ONNX Runtime, Inductor and TensorRT)."""

from __future__ import annotations

from typing import Iterable

import torch
import torch.utils._pytree as pytree
from torch.export.graph_signature import OutputKind, OutputSpec, TensorArgument

from crossgraph.graphs import Graph
from crossgraph.passes.program import copy_graph


def with_outputs(graph: Graph, nodes: Iterable[torch.fx.Node]) -> Graph:
    """A copy of `graph` that returns its user outputs, then the value of each of `nodes` (nodes of `graph`,
    single-tensor values; one already returned is not added again), named by node name.

    The copy's signature stays valid: one USER_OUTPUT spec per added output, and a flat output pytree. Beware
    (Polygraphy's lesson): an intermediate the runtime must now materialize can change what it fuses, so the
    probe's values are those of a slightly different program than the one that was checked.
    """
    probe = copy_graph(graph)
    specs = probe.exported.graph_signature.output_specs
    user = [s.arg.name for s in specs if s.kind == OutputKind.USER_OUTPUT]
    by_name = {n.name: n for n in probe.fx.nodes}
    added = [by_name[n.name] for n in dict.fromkeys(nodes) if n.name not in user]
    output = probe.fx.output_node()
    output.args = ((*output.args[0], *added),)
    specs.extend(OutputSpec(OutputKind.USER_OUTPUT, TensorArgument(n.name), None) for n in added)
    probe.exported.graph_module.recompile()
    names = [*graph.output_names, *(n.name for n in added)]
    probe.exported.module_call_graph[0].signature.out_spec = pytree.tree_structure(tuple(names))
    return Graph(probe.exported, name=graph.name, input_names=graph.input_names, output_names=names,
                 constant_kwargs=graph.constant_kwargs)


def user_outputs(graph: Graph) -> list[str]:
    """Names of the nodes behind the graph's user outputs, in the order an artifact returns them."""
    return [s.arg.name for s in graph.exported.graph_signature.output_specs if s.kind == OutputKind.USER_OUTPUT]

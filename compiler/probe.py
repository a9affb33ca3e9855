"""Probe graphs: a Graph that also returns chosen intermediate values, so one run of a lowered artifact shows
what the target computed at those nodes (how `localize` reads ONNX Runtime, Inductor and TensorRT)."""

from __future__ import annotations

import operator
from typing import Any, Iterable, Sequence

import torch
import torch.utils._pytree as pytree
from torch.export.graph_signature import InputKind, OutputKind, OutputSpec, TensorArgument

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


def isolated(graph: Graph, nodes: Sequence[torch.fx.Node], values: dict[str, Any]) -> tuple[Graph, list[torch.Tensor]]:
    """A graph that computes each of `nodes` (nodes of `graph`, in order) alone, from `values` (the reference
    values by node name) of its inputs, and returns them in that order; with the inputs it takes. How `localize`
    reads a target whose probe graphs cannot be built or run: each op is judged on exactly eager's inputs.

    A tensor input of a node becomes an input of the new graph (fed its reference value), a parameter, buffer or
    constant of `graph` stays one (an initializer in ONNX, a constant to Inductor), a non-tensor input (a size,
    a scalar) is baked in. A getitem of a multi-output op computes the op too. The new graph is captured again
    (graphs.capture), so an op that torch.export cannot re-trace makes this raise."""
    from crossgraph.graphs import capture

    state = {s.arg.name: s.kind for s in graph.exported.graph_signature.input_specs
             if s.kind != InputKind.USER_INPUT and hasattr(s.arg, "name")}
    root = torch.nn.Module()
    new = torch.fx.Graph()
    env: dict[str, Any] = {}
    feed: list[torch.Tensor] = []
    computed: dict[str, torch.fx.Node] = {}

    def source(node: torch.fx.Node) -> Any:
        if node.name in env:
            return env[node.name]
        value = values[node.name]
        if isinstance(value, torch.Tensor) and node.name in state:
            attr = f"c_{len(env)}"
            root.register_buffer(attr, value.detach().clone())
            env[node.name] = new.get_attr(attr)
        elif isinstance(value, torch.Tensor):
            env[node.name] = new.placeholder(f"in_{len(feed)}")
            feed.append(value.detach().clone())
        elif isinstance(value, (tuple, list)) and node.op == "call_function":
            env[node.name] = compute(node)
        else:
            env[node.name] = value
        return env[node.name]

    def compute(node: torch.fx.Node) -> torch.fx.Node:
        if node.name not in computed:
            args, kwargs = torch.fx.map_arg((node.args, node.kwargs), source)
            computed[node.name] = new.call_function(node.target, args, kwargs)
        return computed[node.name]

    outputs = []
    for node in nodes:
        if node.target is operator.getitem and isinstance(node.args[0], torch.fx.Node):
            outputs.append(new.call_function(operator.getitem, (compute(node.args[0]), *node.args[1:])))
        else:
            outputs.append(compute(node))
    # every placeholder before every other node, as torch.fx expects
    first = next((n for n in new.nodes if n.op != "placeholder"), None)
    for p in [n for n in new.nodes if n.op == "placeholder"]:
        if first is not None:
            first.prepend(p)
    new.output(tuple(outputs))
    new.lint()
    module = torch.fx.GraphModule(root, new)
    isolated_graph = capture(module, tuple(feed), name=f"{graph.name}_isolated")
    return isolated_graph, feed

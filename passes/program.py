"""ExportedProgram surgery that keeps a Graph valid: structural copies, adding and removing lifted inputs.

torch.export keeps three things in step with the fx graph: the graph signature (one input spec per placeholder,
in order, parameters/buffers/constants before user inputs; one output spec per output), the state dict
(parameters, persistent buffers) and `constants` (lifted tensors, non-persistent buffers). Passes change them
only through these helpers.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Iterable, Sequence

import torch
from torch.export import ExportedProgram
from torch.export.exported_program import ModuleCallEntry
from torch.export.graph_signature import (ConstantArgument, ExportGraphSignature, InputKind, InputSpec,
                                          OutputKind, TensorArgument)
from torch.fx import Node
from torch.fx._lazy_graph_module import _LazyGraphModule

from crossgraph.graphs import Graph
from crossgraph.graphs.annotations import META_KEY
from crossgraph.passes import fake

STATE_KINDS = (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)
# Where a node came from (torch.export's keys and crossgraph's annotations); carried onto nodes that replace it.
_PROVENANCE_META = ("stack_trace", "nn_module_stack", "source_fn_stack", "torch_fn", "custom", META_KEY)
# Per-node meta dicts that passes and `annotations.put/encode` mutate in place: never shared between copies.
_OWNED_META = (META_KEY, "custom")


def copy_graph(graph: Graph, *, lazy: bool = False) -> Graph:
    """A copy with its own fx graph, node meta, signature and state dicts, sharing every tensor (no weight copy).

    With `lazy`, the copy's GraphModule generates its Python code only when first run or recompiled for real
    (`finish`), and the ExportedProgram is not re-validated: for a pass that rewrites the copy at once, so the
    code is generated once per pass, not twice (half a pass's overhead on a large graph)."""
    ep = graph.exported
    fx = torch.fx.Graph()
    out, old_output = fx.graph_copy(ep.graph, {}, return_output_node=True)
    fx.output(out).meta = dict(old_output.meta)
    for node in fx.nodes:
        for key in _OWNED_META:
            if key in node.meta:
                node.meta[key] = dict(node.meta[key])
    # fx names nodes it copies afresh, and never after a Python builtin: torch.export names the placeholder of
    # `forward(self, input)` `input`, the copy's is `input_1`. Every name the program keeps follows the copy.
    renamed = {a.name: b.name for a, b in zip(ep.graph.nodes, fx.nodes) if a.name != b.name}
    signature, calls = copy.deepcopy(ep.graph_signature), copy.deepcopy(ep.module_call_graph)
    rename_in_program(signature, calls, renamed)
    if lazy:
        exported = copy.copy(ep)  # every field a pass may change is replaced below
        exported._graph_module = _LazyGraphModule(ep.graph_module, fx)
        exported._graph_module.meta.update(ep.graph_module.meta)
        exported._graph_signature = signature
        exported._state_dict = dict(ep.state_dict)
        exported._constants = dict(ep.constants)
        exported._range_constraints = dict(ep.range_constraints)
        exported._module_call_graph = calls
    else:
        exported = ExportedProgram(
            root=ep.graph_module, graph=fx, graph_signature=signature,
            state_dict=dict(ep.state_dict), range_constraints=dict(ep.range_constraints),
            module_call_graph=calls, example_inputs=ep.example_inputs,
            constants=dict(ep.constants), verifiers=list(ep.verifiers))
    return Graph(exported, name=graph.name, input_names=graph.input_names, output_names=graph.output_names,
                 constant_kwargs=graph.constant_kwargs)


def rename_in_program(signature: ExportGraphSignature, calls: list[ModuleCallEntry],
                      renamed: dict[str, str]) -> None:
    """Rename graph nodes (old name -> new name) wherever the program names them, in place: the argument of
    every input and output spec, the user input an output mutates, and the inputs and outputs of each module
    call signature. State names (parameter, buffer and constant targets) and the user-facing argument names
    (`forward_arg_names`) name no node and stay."""
    if not renamed:
        return

    def arg(a: Any) -> Any:
        name = getattr(a, "name", None)
        return dataclasses.replace(a, name=renamed[name]) if isinstance(name, str) and name in renamed else a

    for spec in signature.input_specs:
        spec.arg = arg(spec.arg)
    for spec in signature.output_specs:
        spec.arg = arg(spec.arg)
        if spec.kind == OutputKind.USER_INPUT_MUTATION and spec.target in renamed:
            spec.target = renamed[spec.target]
    for entry in calls:
        if entry.signature is not None:
            entry.signature.inputs = [arg(a) for a in entry.signature.inputs]
            entry.signature.outputs = [arg(a) for a in entry.signature.outputs]


def finish(graph: Graph) -> None:
    """Mark the GraphModule's code stale after a rewrite (torch re-traces that code, e.g. in run_decompositions):
    a lazy module (`copy_graph(lazy=True)`) regenerates it on first use, so a pipeline generates it once, when
    its result first runs; any other module regenerates it now."""
    graph.exported.graph_module.recompile()


def placeholders(graph: Graph) -> list[Node]:
    """The placeholders in order (one per input spec), found through fx's node index, not a graph walk."""
    return graph.fx.find_nodes(op="placeholder")


def state_names(graph: Graph) -> dict[Node, str]:
    """Each parameter, buffer and lifted-constant placeholder with its name in the program's state
    ("h.0.attn.c_attn.weight")."""
    specs = graph.exported.graph_signature.input_specs
    return {node: spec.target for node, spec in zip(placeholders(graph), specs) if spec.kind in STATE_KINDS}


def call_args(graph: Graph, inputs: Sequence[torch.Tensor]) -> list[Any]:
    """The program's placeholders' values in order, for a torch.fx Interpreter over its graph module: the
    state (parameters, buffers, constants) bound from the program, user inputs from `inputs`."""
    program, feed, args = graph.exported, iter(inputs), []
    for spec in program.graph_signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            args.append(spec.arg.value if isinstance(spec.arg, ConstantArgument) else next(feed))
        else:
            args.append(program.state_dict.get(spec.target, program.constants.get(spec.target)))
    return args


def constant_inputs(graph: Graph) -> dict[Node, torch.Tensor]:
    """Placeholders of parameters, buffers and lifted constants that no output mutates, with their tensors."""
    ep = graph.exported
    mutated = {s.target for s in ep.graph_signature.output_specs if s.target is not None}
    found: dict[Node, torch.Tensor] = {}
    for node, spec in zip(placeholders(graph), ep.graph_signature.input_specs):
        if spec.kind in STATE_KINDS and spec.target not in mutated:
            tensor = ep.state_dict.get(spec.target, ep.constants.get(spec.target))
            if isinstance(tensor, torch.Tensor):
                found[node] = tensor
    return found


def add_constant(graph: Graph, name: str, tensor: torch.Tensor, *, buffer: bool = False) -> Node:
    """A new lifted-constant placeholder `c_<name>` holding `tensor` (registered in signature and constants);
    with `buffer`, a persistent buffer `b_<name>` in the state dict instead. Inductor's freezing cannot fold
    computations on lifted constants (torch 2.13: "references nonexistent attribute _tensor_constant0"), so
    state that a target's decomposition computes on (quantized weights) is stored as buffers."""
    ep = graph.exported
    taken = set(ep.state_dict) | set(ep.constants)
    target, suffix = name, 0
    while target in taken:
        suffix += 1
        target = f"{name}_{suffix}"
    specs = ep.graph_signature.input_specs
    first_user = next((i for i, s in enumerate(specs) if s.kind == InputKind.USER_INPUT), len(specs))
    existing = placeholders(graph)
    anchor = existing[first_user] if first_user < len(existing) else next(
        n for n in graph.fx.nodes if n.op != "placeholder")
    mode = fake.fake_mode(graph)
    with graph.fx.inserting_before(anchor):
        node = graph.fx.placeholder(f"{'b' if buffer else 'c'}_{target}")
    node.target = node.name
    node.meta["val"] = mode.from_tensor(tensor, static_shapes=True)
    kind, persistent = (InputKind.BUFFER, True) if buffer else (InputKind.CONSTANT_TENSOR, None)
    specs.insert(first_user, InputSpec(kind, TensorArgument(node.name), target, persistent))
    (ep.state_dict if buffer else ep.constants)[target] = tensor
    return node


def remove_inputs(graph: Graph, nodes: Iterable[Node]) -> None:
    """Erase unused parameter/buffer/constant placeholders and their specs; drop state no spec refers to."""
    ep = graph.exported
    drop = set(nodes)
    specs = ep.graph_signature.input_specs
    kept, dropped_targets = [], set()
    for node, spec in zip(placeholders(graph), list(specs)):
        if node not in drop:
            kept.append(spec)
            continue
        if spec.kind not in STATE_KINDS or node.users:
            raise ValueError(f"placeholder {node.name} ({spec.kind.name}, {len(node.users)} users) cannot be removed")
        graph.fx.erase_node(node)
        dropped_targets.add(spec.target)
    specs[:] = kept
    referenced = {s.target for s in kept} | {s.target for s in ep.graph_signature.output_specs}
    for target in dropped_targets - referenced:
        ep.state_dict.pop(target, None)
        ep.constants.pop(target, None)


def erase_unused(graph: Graph, node: Node) -> None:
    """Erase `node` if nothing uses it, then each of its inputs left unused, and so on (what a fusion replaced);
    placeholders and impure nodes stay."""
    pending, erased = [node], set()
    while pending:
        current = pending.pop()
        if current.op == "call_function" and not current.users and not current.is_impure() \
                and current not in erased:
            pending.extend(current.all_input_nodes)
            graph.fx.erase_node(current)
            erased.add(current)


def carry_provenance(source: Node, node: Node) -> None:
    """Give `node` the provenance and annotations of `source`, the node it replaces (dicts copied, not shared)."""
    for key in _PROVENANCE_META:
        if key in source.meta:
            value = source.meta[key]
            node.meta[key] = dict(value) if isinstance(value, dict) else value


def sync_outputs(graph: Graph) -> None:
    """Point each output spec at the node the output node now returns (passes replace uses, outputs included)."""
    outputs = graph.fx.output_node().args[0]
    for spec, arg in zip(graph.exported.graph_signature.output_specs, outputs):
        if isinstance(arg, Node) and getattr(spec.arg, "name", arg.name) != arg.name:
            spec.arg = dataclasses.replace(spec.arg, name=arg.name)

"""What the PassManager checks after every pass; each check returns the first problem found, or None.

All checks are linear in the graph: fx lint, the ExportedProgram's own verifier plus the calling convention,
annotations, and meta["val"] re-derived with fake tensors (stored back, so later passes read fresh values).
Checks that compute nothing (`aten._assert_tensor_metadata` and the other ops whose schema returns nothing) have
no meta["val"]; they are re-run on fake inputs like every other node, so what they assert still holds.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch.export.graph_signature import InputKind, OutputKind
from torch.fx import Node

from crossgraph.graphs import Annotation, Graph
from crossgraph.graphs.annotations import META_KEY
from crossgraph.passes import fake


def first_problem(graph: Graph, before: Graph, values: ValueCheck) -> str | None:
    """The first broken invariant of `graph` (the output of a pass run on `before`), or None."""
    for check in (lint, signature, annotations):
        problem = check(graph, before)
        if problem:
            return problem
    return values(graph)


def lint(graph: Graph, before: Graph) -> str | None:
    """The fx graph is well formed: nodes in topological order, owned by the graph, targets that exist."""
    try:
        graph.fx.lint()
    except Exception as exc:  # fx raises RuntimeError and AssertionError here
        return f"left an fx graph that does not lint: {exc}"
    return None


def _user_io(graph: Graph) -> tuple[list[str], int]:
    """The user inputs by the forward argument each placeholder stands for (its target: a copy may rename the
    node, `input` to `input_1`, but not the argument), and the number of user outputs."""
    sig = graph.exported.graph_signature
    targets = {n.name: str(n.target) for n in graph.fx.find_nodes(op="placeholder")}
    inputs = [targets.get(getattr(s.arg, "name", ""), getattr(s.arg, "name", ""))
              for s in sig.input_specs if s.kind == InputKind.USER_INPUT]
    return inputs, sum(s.kind == OutputKind.USER_OUTPUT for s in sig.output_specs)


def signature(graph: Graph, before: Graph) -> str | None:
    """torch's ExportedProgram verifier passes, output specs name the returned nodes, user I/O is unchanged."""
    try:
        graph.exported.validate()
    except Exception as exc:  # torch raises SpecViolationError and friends
        return f"left an ExportedProgram that fails torch's verifier: {exc}"
    outputs = zip(graph.exported.graph_signature.output_specs, graph.fx.output_node().args[0])
    named = [(getattr(s.arg, "name", None), a.name) for s, a in outputs if isinstance(a, Node)]
    stale = [(spec, node) for spec, node in named if spec != node]
    if stale:
        return f"left output specs naming {[s for s, _ in stale]} where the graph returns {[a for _, a in stale]}"
    (ins, outs), (ins0, outs0) = _user_io(graph), _user_io(before)
    if ins != ins0 or outs != outs0:
        return f"changed the calling convention: user inputs {ins0} -> {ins}, {outs0} -> {outs} user outputs"
    return None


def _node_refs(value: Any) -> list[Node]:
    if isinstance(value, Node):
        return [value]
    if isinstance(value, (list, tuple, set, frozenset)):
        return [n for v in value for n in _node_refs(v)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _node_refs(v)]
    return []


def annotations(graph: Graph, before: Graph) -> str | None:
    """Annotations are typed, filed under their kind, owned by one node, and name only live nodes of the graph."""
    live = set(graph.fx.nodes)
    owners: dict[int, str] = {}
    for node in graph.fx.nodes:
        anns = node.meta.get(META_KEY)
        if anns is None:
            continue
        if not isinstance(anns, dict):
            return f"left node {node.name} with meta[{META_KEY!r}] of type {type(anns).__name__}, not a dict"
        if id(anns) in owners:
            return f"left nodes {owners[id(anns)]} and {node.name} sharing one annotation dict (copy it)"
        owners[id(anns)] = node.name
        for kind, ann in anns.items():
            if not isinstance(ann, Annotation) or ann.kind != kind:
                return f"left node {node.name} with a {type(ann).__name__} filed under annotation kind {kind!r}"
            for field in dataclasses.fields(ann):
                for ref in _node_refs(getattr(ann, field.name)):
                    if ref not in live:
                        return (f"left a {kind} annotation on node {node.name} that refers to node {ref.name}, "
                                "which is no longer in the graph")
    return None


class ValueCheck:
    """Re-derives every call_function node's meta["val"] with fake tensors; shapes and dtypes must match.

    It remembers the graph it last checked (at first, the trusted input graph). A node with the same op and
    arguments as then, fed the very same input values, would re-derive the same value, so it is not re-run: a
    pass that changes a few nodes costs a few fake evaluations, plus a linear walk. A re-derived value equal in
    shape, strides, dtype and device keeps the stored object, so a change does not dirty everything after it.
    """

    def __init__(self, trusted: Graph) -> None:
        self._checked = {n.name: (_signature(n), n.meta.get("val")) for n in trusted.fx.nodes}

    def __call__(self, graph: Graph) -> str | None:
        """The first node whose stored value is missing or wrong, or None (new values are stored)."""
        before, self._checked = self._checked, {}
        changed: set[Node] = set()  # nodes whose value is not the object checked before under their name
        with fake.fake_mode(graph):
            for node in graph.fx.nodes:
                if node.op == "output":
                    continue
                signature, stored = _signature(node), node.meta.get("val")
                old = before.get(node.name)
                if old is not None and old[0] == signature and old[1] is stored \
                        and not any(i in changed for i in node.all_input_nodes):
                    self._checked[node.name] = old
                    continue
                if node.op in ("placeholder", "call_function") and "val" not in node.meta \
                        and not returns_nothing(node):
                    return f"left {node.op} node {node.name} without meta['val']"
                if node.op == "call_function":
                    problem = _rederive(node, stored)
                    if problem:
                        return problem
                self._checked[node.name] = (signature, node.meta.get("val"))
                if old is None or old[1] is not node.meta.get("val"):
                    changed.add(node)
        return None


def returns_nothing(node: Node) -> bool:
    """Whether `node` calls an op whose schema returns nothing: a check such as `aten._assert_tensor_metadata`
    (which `.to(dtype)` leaves), `aten._assert_scalar` or `aten.sym_constrain_range_for_size`. torch.export
    gives such nodes no meta["val"]; the check is kept all the same: it is re-run on its inputs' fake values
    whenever they change, so a pass that breaks what it asserts (a dtype, a size) fails verification."""
    target = node.target
    return (node.op == "call_function" and isinstance(target, torch._ops.OpOverload)
            and not target._schema.returns)


def _signature(node: Node) -> tuple[Any, ...]:
    def name(n: Node) -> str:
        return n.name
    return node.op, node.target, torch.fx.node.map_arg(node.args, name), torch.fx.node.map_arg(node.kwargs, name)


def _rederive(node: Node, stored: Any) -> str | None:
    """Evaluate `node` on fake inputs: a problem if it fails or disagrees with `stored`, else store the value."""
    try:
        derived = fake.evaluate(node)
    except Exception as exc:  # any op can reject its fake inputs
        first = next(iter(str(exc).splitlines()), "")
        return (f"left node {node.name} = {node.target}(...) that cannot run on its inputs: "
                f"{type(exc).__name__}: {first}")
    if returns_nothing(node):
        return None if derived is None else f"left check node {node.name} = {node.target}(...) returning {derived!r}"
    if fake.has_unbacked(derived) and _rank_dtype(derived) == _rank_dtype(stored):
        return None  # re-running a data-dependent op mints new symbols: keep the stored ones
    if not fake.same_meta(derived, stored):
        return (f"left node {node.name} = {node.target}(...) whose meta['val'] says {_text(stored)} "
                f"but which computes {_text(derived)}")
    if not fake.same_meta(derived, stored, layout=True):
        node.meta["val"] = derived
    return None


def _text(val: Any) -> str:
    if isinstance(val, torch.Tensor):
        return f"{str(val.dtype).removeprefix('torch.')}[{', '.join(map(str, val.shape))}]"
    if isinstance(val, (tuple, list)):
        return "(" + ", ".join(_text(v) for v in val) + ")"
    return repr(val)


def _rank_dtype(val: Any) -> Any:
    if isinstance(val, torch.Tensor):
        return (val.dim(), val.dtype)
    if isinstance(val, (tuple, list)):
        return tuple(_rank_dtype(v) for v in val)
    return type(val)

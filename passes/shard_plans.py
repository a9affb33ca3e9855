"""Sharding plans: rule sets that put a Sharding on every weight and user input of a captured transformer.

    dp    data parallel: inputs split over `data` along the batch; weights whole on every device
    fsdp  ZeRO-3 / FSDP: dp, and each weight split over `data` along its first dimension that divides
    tp    Megatron tensor parallel over `model`: column-parallel Q/K/V and MLP-up (output features split),
          row-parallel attention-out and MLP-down (input features split), vocabulary-parallel token embedding
          and LM head; norms and position embeddings whole
    2d    tp over `model` and fsdp over `data` on another dimension of each weight, inputs split over `data`

A weight's role comes from the graph (the operand of a matmul, and which of its dimensions are the output
features, or the table of an embedding looked up by input ids); whether a linear is row-parallel comes from its
name (`c_proj`, `o_proj`, `down_proj`, ...). Overrides map parameter-name patterns (fnmatch) to specs.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from typing import Callable, Mapping, Sequence

import torch
from torch.fx import Node

from crossgraph.graphs import Graph, InputError, annotations
from crossgraph.graphs.sharding import Mesh, Sharding
from crossgraph.passes import program

aten = torch.ops.aten
SpecLike = Sequence[str | Sequence[str] | None]

ROW_PARALLEL = re.compile(r"(^|\.)(c_proj|o_proj|out_proj|down_proj|fc2|dense_4h_to_h|wo|w2)(\.|$)"
                          r"|(^|\.)(attention\.)?output\.dense(\.|$)")
"""Linears whose input features are split under tensor parallelism (attention-out and MLP-down projections)."""

_TRANSPOSES = (aten.permute.default, aten.t.default, aten.transpose.int)
_VIEWS = (aten.clone.default, aten.alias.default)


@dataclasses.dataclass(frozen=True)
class Role:
    """What a weight is to the model: a linear's weight (`out_dim`: its output-feature dimension) or bias, a
    token embedding table (looked up by user inputs), or anything else (norms, position tables)."""

    kind: str  # "linear", "bias", "embedding", "other"
    name: str
    out_dim: int = 0
    row_parallel: bool = False


def roles(graph: Graph) -> dict[Node, Role]:
    """Each stored weight's role, from how the graph uses it."""
    weights = program.constant_inputs(graph)
    names = program.state_names(graph)
    found: dict[Node, Role] = {}
    user_inputs = set(graph.input_nodes())
    for node in graph.fx.nodes:
        if node.target in (aten.mm.default, aten.addmm.default):
            weight, flips = _through_transposes(node.args[-1], weights)
            if weight is None or len(weight.meta["val"].shape) != 2:
                continue
            name = names[weight]
            role = Role("linear", name, out_dim=0 if flips % 2 else 1, row_parallel=bool(ROW_PARALLEL.search(name)))
            found.setdefault(weight, role)
            bias = node.args[0] if node.target == aten.addmm.default else None
            if bias in weights:
                found.setdefault(bias, Role("bias", names[bias], row_parallel=role.row_parallel))
        elif node.target == aten.embedding.default and node.args[0] in weights:
            if _reads_any(node.args[1], user_inputs):
                found[node.args[0]] = Role("embedding", names[node.args[0]])
    for node in weights:
        found.setdefault(node, Role("other", names[node]))
    return found


def _through_transposes(node: object, weights: dict[Node, torch.Tensor]) -> tuple[Node | None, int]:
    """The stored weight a matmul operand re-lays out by transposes and copies, and how many transposes."""
    flips = 0
    while isinstance(node, Node) and node not in weights:
        if node.target in _TRANSPOSES:
            flips += 1
        elif node.target not in _VIEWS:
            return None, 0
        node = node.args[0]
    return (node, flips) if isinstance(node, Node) else (None, 0)


def _reads_any(node: object, sources: set[Node]) -> bool:
    pending, seen = [node], set()
    while pending:
        current = pending.pop()
        if not isinstance(current, Node) or current in seen:
            continue
        if current in sources:
            return True
        seen.add(current)
        pending.extend(current.all_input_nodes)
    return False


# ---- the plans ------------------------------------------------------------------------------------------------
def _tp(role: Role, shape: tuple[int, ...]) -> list[tuple[str, ...]]:
    spec: list[tuple[str, ...]] = [()] * len(shape)
    if role.kind == "linear":
        spec[1 - role.out_dim if role.row_parallel else role.out_dim] = ("model",)
    elif role.kind == "bias" and not role.row_parallel:
        spec[0] = ("model",)
    elif role.kind == "embedding":
        spec[0] = ("model",)
    return spec


def _fsdp(spec: list[tuple[str, ...]], shape: tuple[int, ...], mesh: Mesh) -> list[tuple[str, ...]]:
    """Add `data` to the first dimension not already split that it divides."""
    size = mesh.axis_size("data")
    for dim, extent in enumerate(shape):
        if not spec[dim] and extent % size == 0 and extent >= size:
            spec[dim] = ("data",)
            break
    return spec


PlanRule = Callable[[Role, tuple[int, ...], Mesh], list[tuple[str, ...]]]
PLANS: dict[str, tuple[tuple[str, ...], PlanRule, bool]] = {
    "dp": (("data",), lambda role, shape, mesh: [()] * len(shape), True),
    "fsdp": (("data",), lambda role, shape, mesh: _fsdp([()] * len(shape), shape, mesh), True),
    "tp": (("model",), lambda role, shape, mesh: _tp(role, shape), False),
    "2d": (("data", "model"), lambda role, shape, mesh: _fsdp(_tp(role, shape), shape, mesh), True),
}
"""Plan name -> (mesh axes it needs, the rule for a weight's spec, whether inputs split over `data`)."""


def plan_rules(plan: str) -> tuple[tuple[str, ...], PlanRule, bool]:
    """PLANS[plan]; an unknown name is an InputError listing the known ones."""
    if plan not in PLANS:
        raise InputError(f"unknown sharding plan {plan!r}; known: {', '.join(PLANS)}")
    return PLANS[plan]


def apply_plan(graph: Graph, plan: str, mesh: Mesh, overrides: Mapping[str, SpecLike] | None = None) -> Graph:
    """Annotate `graph`'s weights and user inputs (in place) with the Shardings of `plan` on `mesh`, then
    `overrides` (parameter-name pattern -> spec, e.g. {"h.*.mlp.c_fc.weight": ("model", None)})."""
    needs, rule, split_inputs = plan_rules(plan)
    missing = [a for a in needs if a not in mesh.names]
    if missing:
        raise InputError(f"plan {plan} shards over mesh axes {', '.join(needs)}; mesh {mesh} has no "
                         f"{', '.join(missing)} (e.g. --mesh {','.join(f'{a}=2' for a in needs)})")
    for node, role in roles(graph).items():
        shape = tuple(int(s) for s in node.meta["val"].shape)
        annotations.put(node, Sharding(mesh, tuple(rule(role, shape, mesh)), source="plan"))
    for node in graph.input_nodes():
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor):
            spec = [("data",) if split_inputs and i == 0 else () for i in range(val.dim())]
            annotations.put(node, Sharding(mesh, tuple(spec), source="plan"))
    _override(graph, mesh, overrides or {})
    return graph


def _override(graph: Graph, mesh: Mesh, overrides: Mapping[str, SpecLike]) -> None:
    named = [(name, node) for node, name in program.state_names(graph).items()]
    for pattern, spec in overrides.items():
        hits = [node for name, node in named if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            raise InputError(f"sharding override {pattern!r} matches no parameter; names look like "
                             f"{', '.join(name for name, _ in named[:3])}")
        for node in hits:
            rank = node.meta["val"].dim()
            if len(spec) != rank:
                raise InputError(f"sharding override {pattern!r} gives {len(spec)} dimensions; "
                                 f"{node.name} has {rank}")
            annotations.put(node, Sharding(mesh, tuple(spec), source="user"))


def parse_override(text: str) -> tuple[str, tuple[tuple[str, ...], ...]]:
    """`h.*.mlp.c_fc.weight=model,None` -> the pattern and its spec (`data+model` splits one dim over both)."""
    pattern, eq, spec = text.partition("=")
    if not eq or not pattern.strip():
        raise InputError(f"bad override {text!r}: write PATTERN=SPEC, e.g. 'h.*.mlp.c_fc.weight=model,None'")
    dims = tuple(() if d.strip() in ("None", "") else tuple(a.strip() for a in d.split("+"))
                 for d in spec.split(","))
    return pattern.strip(), dims

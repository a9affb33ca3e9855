"""first_divergent_node: the first node, in topological order, where a target's value leaves the eager graph's,
with the user's source line that produced it; the answer to "where does the target go wrong".

Reference values come from the graph run node by node by a torch.fx Interpreter (weights bound). Candidate
values: for `jax`, the jaxlower interpreter's environment run op by op outside jax.jit; for `onnx`, `inductor`
and `tensorrt`, probe graphs (compiler.probe) that also return intermediates, lowered and run once each. A probe
returns at most PROBE_CHUNK intermediates, in topological order, and probing stops at the first chunk holding a
divergence: a graph of N comparable nodes costs at most ceil(N / PROBE_CHUNK) lowerings (one for every model in
the test suite). Chunks are scanned in order, not bisected: an error can be masked downstream (relu, argmax,
a mask), so "the output at position k diverges" does not say which side of k the first divergence lies.
Caveat: a probe output must be materialized, which can change what the runtime fuses (Polygraphy's lesson).
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from crossgraph.compiler.lower import lower
from crossgraph.compiler.probe import user_outputs, with_outputs
from crossgraph.compiler.subject import to_numpy
from crossgraph.compiler.tolerance import Tolerance, TolerancePolicy
from crossgraph.graphs import Graph, InputError, Provenance
from crossgraph.passes import program

LOCALIZABLE = ("jax", "onnx", "inductor", "tensorrt")
"""Targets whose intermediate values can be read; eager has none to compare, flax is another model altogether."""

PROBE_CHUNK = 256
"""Most intermediates one probe graph returns (bounds the extra outputs, and so the memory, of one run)."""


def first_divergent_node(graph: Graph, target: str, inputs: Sequence[torch.Tensor],
                         policy: TolerancePolicy | None = None) -> dict[str, Any] | None:
    """The first node whose value on `target` is out of `policy`'s tolerance (for the node's op family and dtype)
    or non-finite where the reference is finite, as a JSON-able dict (see `Divergence.to_json`); None when every
    node agrees. `graph` is the graph the target was given, after passes. InputError for targets without
    intermediate values to compare (eager, flax)."""
    if target not in LOCALIZABLE:
        raise InputError(f"cannot localize a divergence on target '{target}'; localizable targets: "
                         f"{', '.join(LOCALIZABLE)}")
    found = first_divergence(graph, target, tuple(inputs), policy or TolerancePolicy(),
                             reference_values(graph, inputs))
    return found.to_json() if found else None


def reference_values(graph: Graph, inputs: Sequence[torch.Tensor]) -> dict[str, Any]:
    """Every node's eager value by node name: the exported program's graph run by a torch.fx Interpreter, its
    parameters, buffers and constants bound from the program's state."""
    interpreter = torch.fx.Interpreter(graph.exported.graph_module, garbage_collect_values=False)
    with torch.no_grad():
        interpreter.run(*program.call_args(graph, inputs))
    return {node.name: value for node, value in interpreter.env.items()}


@dataclasses.dataclass(frozen=True)
class Divergence:
    """Where and by how much a node's candidate value leaves its reference value. `node` is the compared node
    (a getitem for an output of a multi-output op); reports name `blamed`, the op that computed the value."""

    node: torch.fx.Node
    provenance: Provenance | None
    max_abs_err: float
    max_rel_err: float
    tolerance: Tolerance
    worst_index: list[int]
    inputs_ok: bool
    detail: str

    @property
    def blamed(self) -> torch.fx.Node:
        """The op that computed the divergent value: the compared node, or the multi-output op behind its
        getitem."""
        source = self.node.args[0] if self.node.target is operator.getitem and self.node.args else None
        return source if isinstance(source, torch.fx.Node) and source.op == "call_function" else self.node

    @property
    def message(self) -> str:
        where = f" at {self.provenance}" if self.provenance else ""
        cause = ("its inputs agree, so the error starts here" if self.inputs_ok
                 else "not every input could be compared, so the error may start earlier")
        which = f"output {self.node.args[1]}: " if self.blamed is not self.node else ""
        return f"node '{self.blamed.name}' ({self.blamed.target}){where}: {which}{self.detail}; {cause}"

    def to_json(self) -> dict[str, Any]:
        """JSON-able: non-finite errors become None, as in the parity report."""
        prov = self.provenance
        return {"node": self.blamed.name, "op": str(self.blamed.target),
                "provenance": {"module": prov.module_path, "file": prov.file, "line": prov.line} if prov else None,
                "max_abs_err": _finite(self.max_abs_err), "max_rel_err": _finite(self.max_rel_err),
                "atol": self.tolerance.atol, "rtol": self.tolerance.rtol, "worst_index": self.worst_index,
                "inputs_ok": self.inputs_ok, "message": self.message}


def first_divergence(graph: Graph, target: str, inputs: tuple[torch.Tensor, ...], policy: TolerancePolicy,
                     reference: dict[str, Any]) -> Divergence | None:
    """`first_divergent_node` on precomputed reference values, as a Divergence."""
    nodes = comparable_nodes(graph, reference)
    verdicts: dict[str, bool] = {}
    for chunk, values in _candidate_values(graph, target, inputs, nodes):
        for node in (n for n in chunk if n.name in values):
            ref = reference[node.name]
            tol = policy.for_output(target, ref.dtype, op=node.target)
            check = compare_values(to_numpy(ref), np.asarray(values[node.name]), tol)
            verdicts[node.name] = check is None
            if check is not None:
                abs_err, rel_err, worst, detail = check
                inputs_ok = _inputs_ok(node, verdicts, {n.name for n in nodes})
                return Divergence(node, graph.provenance(node), abs_err, rel_err, tol, worst, inputs_ok, detail)
    return None


def comparable_nodes(graph: Graph, reference: dict[str, Any]) -> list[torch.fx.Node]:
    """call_function nodes whose eager value is one tensor, in topological order (a multi-output node is
    compared through its getitems; sizes and other scalars are not compared)."""
    return [n for n in graph.fx.nodes
            if n.op == "call_function" and isinstance(reference.get(n.name), torch.Tensor)]


def _candidate_values(graph: Graph, target: str, inputs: tuple[torch.Tensor, ...],
                      nodes: list[torch.fx.Node]) -> Iterator[tuple[list[torch.fx.Node], dict[str, Any]]]:
    """Consecutive chunks of `nodes` with the target's values (by node name) of at least those nodes: one
    lowering per chunk; one chunk for jax."""
    if target == "jax":
        from crossgraph.models.convert import tensor_to_jax
        yield nodes, lower(graph, "jax").function.values(*(tensor_to_jax(t) for t in inputs))
        return
    for start in range(0, len(nodes), PROBE_CHUNK):
        chunk = nodes[start:start + PROBE_CHUNK]
        probe = with_outputs(graph, chunk)
        yield chunk, dict(zip(user_outputs(probe), lower(probe, target)(*inputs)))


def compare_values(ref: np.ndarray, cand: np.ndarray,
                   tol: Tolerance) -> tuple[float, float, list[int], str] | None:
    """None when `cand` is within `tol` of `ref` everywhere, else (max abs error, max rel error, worst index,
    what is wrong). Where the reference is NaN or Inf the candidate must be the same; where it is finite the
    candidate must be finite too. Errors are measured where the reference is finite (rel: where |ref| > atol)."""
    if ref.shape != cand.shape:
        return float("nan"), float("nan"), [], f"shape {cand.shape} != reference shape {ref.shape}"
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    finite = np.isfinite(r)
    with np.errstate(invalid="ignore"):
        diff = np.where(finite, np.abs(c - r), 0.0)
        excess = diff - tol.atol - tol.rtol * np.abs(np.where(finite, r, 0.0))
    special_differs = ~finite & ~((np.isnan(r) & np.isnan(c)) | (r == c))
    bad = special_differs | (finite & ~np.isfinite(c)) | (excess > 0)
    if not bad.any():
        return None
    abs_err = float(np.max(diff)) if diff.size else 0.0
    big = finite & (np.abs(np.where(finite, r, 0.0)) > tol.atol)
    rel_err = float(np.max(diff[big] / np.abs(r[big]))) if big.any() else 0.0
    worst = np.unravel_index(int(np.argmax(np.where(bad, np.nan_to_num(excess, nan=np.inf), -np.inf))), r.shape)
    index = [int(i) for i in worst]
    what = "holds NaN or Inf where the reference is finite" if (finite & ~np.isfinite(c)).any() \
        else f"{int(bad.sum())} of {bad.size} elements out of tolerance"
    return abs_err, rel_err, index, (f"{what}; worst at {tuple(index)}: {float(c[worst]):.9g} vs reference "
                                     f"{float(r[worst]):.9g}")


def _inputs_ok(node: torch.fx.Node, verdicts: dict[str, bool], comparable: set[str]) -> bool:
    """True when every tensor input of `node` was compared and agreed. Graph inputs and weights agree by
    construction; an input that is not one tensor (a multi-output node's tuple, a size) stands for its inputs."""
    for source in node.all_input_nodes:
        if source.op in ("placeholder", "get_attr"):
            continue
        if source.name in comparable:
            if not verdicts.get(source.name, False):
                return False
        elif not _inputs_ok(source, verdicts, comparable):
            return False
    return True


def _finite(x: float) -> float | None:
    return x if np.isfinite(x) else None

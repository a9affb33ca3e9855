"""first_divergent_node: the first node, in topological order, where a target's value leaves the eager graph's,
with the user's source line that produced it; the answer to "where does the target go wrong".

Reference values come from the graph run node by node by a torch.fx Interpreter (weights bound), and, for the
float64-oracle rule, from the same graph run in float64 (compiler.oracle.graph_values). A float32 node whose
tolerance is a policy default is judged as the output judge judges outputs: |cand - o| <= oracle_allowance(ref,
o) (compiler.compare), so a large input, whose float32 noise is large everywhere, does not get an early node
blamed for noise eager float32 has too; other nodes (and every node when the float64 run fails, say for dialect
ops that reject float64) by the tolerance rule |cand - ref| <= atol + rtol * |ref|.

Candidate values (`candidate_values`), by the first method that works, and the answer names it (`method`):
  * "interpreter" (jax): the jaxlower interpreter's environment, run op by op outside jax.jit.
  * "probe" (onnx, inductor, tensorrt; jax when its interpreter fails): probe graphs (compiler.probe) that also
    return intermediates, lowered and run once each. A probe returns at most PROBE_CHUNK intermediates, in
    topological order, and probing stops at the first chunk holding a divergence: a graph of N comparable nodes
    costs at most ceil(N / PROBE_CHUNK) lowerings. A probe that cannot be built or run is split in halves, each
    probed, down to single nodes, until PROBE_FAILURES probes have failed.
  * "isolated": each op alone, fed eager's values of its inputs (compiler.probe.isolated), chunk by chunk, for
    what probes could not read. It judges the op's lowering, not its context (a fusion across ops is not seen).
  * "outputs": when some nodes could not be read at all and none that could diverges, the lowered graph's own
    outputs; a divergent output names its node, with inputs_ok false.
Chunks are scanned in order, not bisected by value: an error can be masked downstream (relu, argmax, a mask), so
"the output at position k diverges" does not say which side of k the first divergence lies.
Caveat: a probe output must be materialized, which can change what the runtime fuses (Polygraphy's lesson).

NaN and Inf: an intermediate may hold them legitimately (a -inf attention mask, a masked-out softmax row), so a
node passes where the candidate has the same NaN/Inf as the reference, and fails where the reference is finite and
the candidate is not. The output judge (compare.compare_array) is stricter on purpose: a user-visible output
holding NaN or Inf never passes.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from crossgraph.compiler.compare import oracle_allowance
from crossgraph.compiler.lower import lower
from crossgraph.compiler.probe import isolated, user_outputs, with_outputs
from crossgraph.compiler.subject import to_numpy
from crossgraph.compiler.tolerance import Tolerance, TolerancePolicy
from crossgraph.graphs import Graph, InputError, Provenance
from crossgraph.passes import program

LOCALIZABLE = ("jax", "onnx", "inductor", "tensorrt")
"""Targets whose intermediate values can be read; eager has none to compare, flax is another model altogether."""

PROBE_CHUNK = 256
"""Most intermediates one probe graph returns (bounds the extra outputs, and so the memory, of one run)."""

PROBE_FAILURES = 8
"""Failed probe (or isolated-op) lowerings tolerated in one localization before the rest is read another way:
enough to bisect a PROBE_CHUNK chunk down to the one node that breaks its probe."""

Values = dict[str, Any]


def first_divergent_node(graph: Graph, target: str, inputs: Sequence[torch.Tensor],
                         policy: TolerancePolicy | None = None) -> dict[str, Any] | None:
    """The first node whose value on `target` is out of `policy`'s tolerance (for the node's op family and dtype;
    the float64-oracle rule where it applies) or non-finite where the reference is finite, as a JSON-able dict
    (see `Divergence.to_json`: with "method", how the value was read, "rule", and "note" when a fallback was
    taken); None when every node was read and agrees. `graph` is the graph the target was given, after passes.
    InputError for targets without intermediate values to compare (eager, flax); otherwise it never raises: what
    could not be done is said in the dict ("node" None when nothing could be blamed)."""
    if target not in LOCALIZABLE:
        raise InputError(f"cannot localize a divergence on target '{target}'; localizable targets: "
                         f"{', '.join(LOCALIZABLE)}")
    inputs = tuple(inputs)
    try:
        reference = reference_values(graph, inputs)
    except Exception as exc:  # the graph itself does not run eagerly: nothing to compare with
        return _unlocalized(f"the graph does not run eagerly ({_why(exc)})", [])
    notes: list[str] = []
    oracle = oracle_values(graph, inputs, notes)
    try:
        found = _locate(graph, target, inputs, policy or TolerancePolicy(), reference, oracle, notes)
    except _TargetFails as failed:
        return _unlocalized(f"{target} fails on the graph itself ({_why(failed.error)})", notes)
    except Exception as exc:  # a bug of the localizer's own must not hide the verdict it was asked to explain
        return _unlocalized(f"{type(exc).__name__}: {exc}", notes)
    if isinstance(found, Divergence):
        return found.to_json()
    return found


def reference_values(graph: Graph, inputs: Sequence[torch.Tensor]) -> dict[str, Any]:
    """Every node's eager value by node name: the exported program's graph run by a torch.fx Interpreter, its
    parameters, buffers and constants bound from the program's state."""
    interpreter = torch.fx.Interpreter(graph.exported.graph_module, garbage_collect_values=False)
    with torch.no_grad():
        interpreter.run(*program.call_args(graph, inputs))
    return {node.name: value for node, value in interpreter.env.items()}


def oracle_values(graph: Graph, inputs: Sequence[torch.Tensor], notes: list[str] | None = None) -> Values | None:
    """Every node's float64 value by name (compiler.oracle.graph_values), or None (with a note) when the graph
    does not run in float64."""
    from crossgraph.compiler.oracle import graph_values
    try:
        return graph_values(graph, inputs)
    except Exception as exc:  # dialect ops (int8 linears...) may reject float64: judge by tolerance alone
        if notes is not None:
            notes.append(f"the graph does not run in float64 ({_why(exc)}): every node is judged by the "
                         "tolerance rule")
        return None


@dataclasses.dataclass(frozen=True)
class Divergence:
    """Where and by how much a node's candidate value leaves its reference value. `node` is the compared node
    (a getitem for an output of a multi-output op); reports name `blamed`, the op that computed the value.
    `rule` is "float64-oracle" or "tolerance", `method` how the candidate value was read (see the module
    docstring), `note` what the localization had to do without."""

    node: torch.fx.Node
    provenance: Provenance | None
    max_abs_err: float
    max_rel_err: float
    tolerance: Tolerance
    worst_index: list[int]
    inputs_ok: bool
    detail: str
    rule: str = "tolerance"
    method: str = "probe"
    note: str | None = None

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
        how = {"isolated": " (the op run alone on eager's inputs)",
               "outputs": " (a graph output: its intermediates could not be read)"}.get(self.method, "")
        return f"node '{self.blamed.name}' ({self.blamed.target}){where}{how}: {which}{self.detail}; {cause}"

    def to_json(self) -> dict[str, Any]:
        """JSON-able: non-finite errors become None, as in the parity report."""
        prov = self.provenance
        out = {"node": self.blamed.name, "op": str(self.blamed.target),
               "provenance": {"module": prov.module_path, "file": prov.file, "line": prov.line} if prov else None,
               "max_abs_err": _finite(self.max_abs_err), "max_rel_err": _finite(self.max_rel_err),
               "atol": self.tolerance.atol, "rtol": self.tolerance.rtol, "worst_index": self.worst_index,
               "inputs_ok": self.inputs_ok, "rule": self.rule, "method": self.method, "message": self.message}
        if self.note:
            out["note"] = self.note
        return out


def first_divergence(graph: Graph, target: str, inputs: tuple[torch.Tensor, ...], policy: TolerancePolicy,
                     reference: dict[str, Any], *, oracle: Values | None = None,
                     notes: list[str] | None = None) -> Divergence | None:
    """`first_divergent_node` on precomputed reference values (and float64 values, for the float64-oracle
    rule; without them every node is judged by tolerance) as a Divergence, None when no node could be blamed
    (`notes`, appended to when given, says what could not be read)."""
    try:
        found = _locate(graph, target, inputs, policy, reference, oracle, [] if notes is None else notes)
    except _TargetFails as failed:  # the target cannot run the graph at all: that error is the answer
        raise failed.error
    return found if isinstance(found, Divergence) else None


def _locate(graph: Graph, target: str, inputs: tuple[torch.Tensor, ...], policy: TolerancePolicy,
            reference: Values, oracle: Values | None, notes: list[str]) -> Divergence | dict[str, Any] | None:
    """A Divergence, None when every node was read and agrees, or a JSON-able dict ("node" None) saying why
    nothing could be blamed."""
    nodes = comparable_nodes(graph, reference)
    comparable = {n.name for n in nodes}
    verdicts: dict[str, bool] = {}
    reader = _Reader(graph, target, inputs, reference, notes)
    for chunk, values, method in reader.chunks(nodes):
        for node in (n for n in chunk if n.name in values):
            found = _judge(graph, target, node, reference, oracle, values[node.name], policy)
            verdicts[node.name] = found is None
            if found is not None:
                inputs_ok = _inputs_ok(node, verdicts, comparable)
                return dataclasses.replace(found, inputs_ok=inputs_ok, method=method, note=_joined(notes))
    unread = [n for n in nodes if n.name not in verdicts]
    if not unread:
        return None
    notes.append(f"{len(unread)} of {len(nodes)} nodes could not be read on {target} "
                 f"(first: '{unread[0].name}'); every node that could agrees")
    return _by_outputs(graph, target, inputs, reference, oracle, policy, notes)


def comparable_nodes(graph: Graph, reference: dict[str, Any]) -> list[torch.fx.Node]:
    """call_function nodes whose eager value is one tensor, in topological order (a multi-output node is
    compared through its getitems; sizes and other scalars are not compared)."""
    return [n for n in graph.fx.nodes
            if n.op == "call_function" and isinstance(reference.get(n.name), torch.Tensor)]


def candidate_values(graph: Graph, target: str, inputs: Sequence[torch.Tensor],
                     nodes: Sequence[torch.fx.Node | str], *, notes: list[str] | None = None) -> dict[str, np.ndarray]:
    """The target's values of `nodes` (nodes of `graph` or their names; single-tensor values), by node name, as
    numpy arrays: read by the interpreter (jax), probe graphs, or each op alone on eager's inputs, whichever works
    (see the module docstring). A node no method could read is left out, and said in `notes` (appended to, when
    given). Never raises for a graph and target that run; InputError for a target that cannot run here."""
    if target not in LOCALIZABLE:
        raise InputError(f"cannot read intermediate values on target '{target}'; readable targets: "
                         f"{', '.join(LOCALIZABLE)}")
    inputs = tuple(inputs)
    notes = [] if notes is None else notes
    by_name = {n.name: n for n in graph.fx.nodes}
    wanted = [by_name[n if isinstance(n, str) else n.name] for n in dict.fromkeys(
        n if isinstance(n, str) else n.name for n in nodes)]
    try:
        reference = reference_values(graph, inputs)
    except Exception as exc:  # without eager values, only the probes can read (isolated ops need them)
        notes.append(f"the graph does not run eagerly ({_why(exc)}): ops cannot be read in isolation")
        reference = {}
    out: dict[str, np.ndarray] = {}
    reader = _Reader(graph, target, inputs, reference, notes)
    try:
        for chunk, values, _ in reader.chunks(wanted):
            out.update({n.name: _array(values[n.name]) for n in chunk if n.name in values})
    except _TargetFails as failed:
        notes.append(f"{target} fails on the graph itself ({_why(failed.error)})")
    missing = [n.name for n in wanted if n.name not in out]
    if missing:
        notes.append(f"{len(missing)} of {len(wanted)} nodes could not be read on {target}: "
                     f"{', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''}")
    return out


def _candidate_values(graph: Graph, target: str, inputs: tuple[torch.Tensor, ...],
                      nodes: list[torch.fx.Node]) -> Iterator[tuple[list[torch.fx.Node], dict[str, Any]]]:
    """Consecutive chunks of `nodes` with the target's values (by node name) of those it could read (kept for
    callers of the chunked form; `candidate_values` is the public one)."""
    for chunk, values, _ in _Reader(graph, target, inputs, {}, []).chunks(nodes):
        yield chunk, values


class _TargetFails(Exception):
    """The target cannot lower or run the graph itself (not only its probes): no value of it can be read."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _Reader:
    """Reads a target's values of nodes chunk by chunk, in order, degrading from one method to the next (see the
    module docstring); failures go to `notes`, one line per kind of failure."""

    def __init__(self, graph: Graph, target: str, inputs: tuple[torch.Tensor, ...], reference: Values,
                 notes: list[str]) -> None:
        self.graph, self.target, self.inputs, self.reference, self.notes = graph, target, inputs, reference, notes
        self.failures = 0
        self._noted: set[str] = set()
        self._runs: bool | None = None

    def _check_target_runs(self) -> None:
        """After the first failed read: raise _TargetFails when the target cannot run the graph as it is either
        (one lowering, once), so that its own error is reported rather than worked around node by node."""
        if self._runs is None:
            try:
                lower(self.graph, self.target)(*self.inputs)
                self._runs = True
            except Exception as exc:  # any failure of the target on the unmodified graph
                self._runs = False
                raise _TargetFails(exc) from exc

    def chunks(self, nodes: list[torch.fx.Node]) -> Iterator[tuple[list[torch.fx.Node], Values, str]]:
        if not nodes:
            return
        if self.target == "jax":
            try:
                yield nodes, self._interpret(), "interpreter"
                return
            except Exception as exc:  # an op the interpreter cannot run eagerly: probe jitted graphs instead
                self._check_target_runs()
                self._note("interpreter", f"the jax interpreter failed ({_why(exc)}): probe graphs were used")
        for start in range(0, len(nodes), PROBE_CHUNK):
            yield from self._split(nodes[start:start + PROBE_CHUNK], self._probe, "probe")

    def _split(self, chunk: list[torch.fx.Node], read: Callable[[list[torch.fx.Node]], Values],
               method: str) -> Iterator[tuple[list[torch.fx.Node], Values, str]]:
        """`chunk` read by `read`; on failure its halves (bisection over the node list) while failures are
        allowed, then, for probes, each op in isolation; a node nothing reads is yielded with no value."""
        if self.failures < PROBE_FAILURES:
            try:
                yield chunk, read(chunk), method
                return
            except Exception as exc:  # a probe that cannot be built or run: read smaller pieces, or another way
                self._check_target_runs()
                self.failures += 1
                self._note(method, f"{method} of {len(chunk)} node(s) from '{chunk[0].name}' failed "
                                   f"({_why(exc)})")
            if len(chunk) > 1 and self.failures < PROBE_FAILURES:
                half = len(chunk) // 2
                yield from self._split(chunk[:half], read, method)
                yield from self._split(chunk[half:], read, method)
                return
        if method == "probe" and self.reference:
            self._note("fallback", "ops whose probes failed were run in isolation on eager's inputs")
            yield from self._isolated_chunks(chunk)
            return
        yield chunk, {}, method

    def _isolated_chunks(self, chunk: list[torch.fx.Node]) -> Iterator[tuple[list[torch.fx.Node], Values, str]]:
        try:
            yield chunk, self._isolated(chunk), "isolated"
            return
        except Exception as exc:  # an op that does not re-capture or lower alone: smaller pieces, then one by one
            self.failures += 1
            self._note("isolated", f"isolated ops from '{chunk[0].name}' failed ({_why(exc)})")
        if len(chunk) > 1:
            half = len(chunk) // 2
            if self.failures < 2 * PROBE_FAILURES:
                yield from self._isolated_chunks(chunk[:half])
                yield from self._isolated_chunks(chunk[half:])
                return
        yield chunk, {}, "isolated"

    def _interpret(self) -> Values:
        from crossgraph.models.convert import tensor_to_jax
        return lower(self.graph, "jax").function.values(*(tensor_to_jax(t) for t in self.inputs))

    def _probe(self, chunk: list[torch.fx.Node]) -> Values:
        probe = with_outputs(self.graph, chunk)
        return dict(zip(user_outputs(probe), lower(probe, self.target)(*self.inputs)))

    def _isolated(self, chunk: list[torch.fx.Node]) -> Values:
        graph, feed = isolated(self.graph, chunk, self.reference)
        outs = lower(graph, self.target)(*feed)
        if len(outs) != len(chunk):
            raise RuntimeError(f"{len(outs)} outputs for {len(chunk)} isolated ops")
        return {n.name: v for n, v in zip(chunk, outs)}

    def _note(self, kind: str, text: str) -> None:
        if kind not in self._noted:
            self._noted.add(kind)
            self.notes.append(text)


def _array(value: Any) -> np.ndarray:
    """A torch tensor, jax array or numpy array as numpy."""
    return to_numpy(value) if isinstance(value, torch.Tensor) else np.asarray(value)


def _judge(graph: Graph, target: str, node: torch.fx.Node, reference: Values, oracle: Values | None,
           candidate: Any, policy: TolerancePolicy) -> Divergence | None:
    """The node's verdict as a Divergence (inputs_ok to be filled in), or None when it agrees."""
    ref = reference[node.name]
    tol = policy.for_output(target, ref.dtype, op=node.target)
    wide = oracle.get(node.name) if oracle is not None else None
    use_oracle = (isinstance(wide, torch.Tensor) and ref.dtype == torch.float32 and wide.shape == ref.shape
                  and wide.dtype == torch.float64 and policy.oracle_applies(target, ref.dtype, op=node.target))
    check = compare_values(to_numpy(ref), _array(candidate), tol,
                           oracle=to_numpy(wide) if use_oracle else None)
    if check is None:
        return None
    abs_err, rel_err, worst, detail = check
    return Divergence(node, graph.provenance(node), abs_err, rel_err, tol, worst, False, detail,
                      rule="float64-oracle" if use_oracle else "tolerance")


def _by_outputs(graph: Graph, target: str, inputs: tuple[torch.Tensor, ...], reference: Values,
                oracle: Values | None, policy: TolerancePolicy, notes: list[str]) -> Divergence | dict[str, Any]:
    """The last resort: the lowered graph's own outputs, compared node by node; the first divergent output's node
    (inputs_ok false), else a dict ("node" None) saying that they agree, or why the graph does not lower or run."""
    try:
        outs = lower(graph, target)(*inputs)
    except Exception as exc:
        notes.append(f"the graph itself does not run on {target} ({_why(exc)})")
        return _unlocalized("no value could be read", notes)
    names = user_outputs(graph)
    if len(names) != len(outs):
        return _unlocalized(f"{len(outs)} outputs for {len(names)} graph outputs", notes)
    by_name = {n.name: n for n in graph.fx.nodes}
    for name, value in zip(names, outs):
        node = by_name.get(name)
        if node is None or node.op != "call_function" or not isinstance(reference.get(name), torch.Tensor):
            continue
        found = _judge(graph, target, node, reference, oracle, value, policy)
        if found is not None:
            return dataclasses.replace(found, method="outputs", note=_joined(notes))
    notes.append("the graph's outputs agree with eager on these inputs")
    return {"node": None, "method": "outputs", "note": _joined(notes),
            "message": f"no divergent node found: {_joined(notes)}"}


def _unlocalized(why: str, notes: list[str]) -> dict[str, Any]:
    note = _joined(notes)
    return {"node": None, "method": None, "note": note,
            "message": f"could not localize: {why}" + (f"; {note}" if note else "")}


def compare_values(ref: np.ndarray, cand: np.ndarray, tol: Tolerance,
                   oracle: np.ndarray | None = None) -> tuple[float, float, list[int], str] | None:
    """None when `cand` agrees with `ref` everywhere, else (max abs error, max rel error, worst index, what is
    wrong). Where the reference is NaN or Inf the candidate must be the same (an intermediate may hold them
    legitimately; compare.compare_array, the output judge, fails any NaN/Inf instead); where it is finite the
    candidate must be finite too. With `oracle` (the float64 value of a float32 `ref`, same shape) a finite
    element agrees when |cand - oracle| <= compare.oracle_allowance(ref, oracle); without, when
    |cand - ref| <= atol + rtol * |ref|. Errors are measured against `ref` where it is finite (rel: where
    |ref| > atol)."""
    if ref.shape != cand.shape:
        return float("nan"), float("nan"), [], f"shape {cand.shape} != reference shape {ref.shape}"
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    finite = np.isfinite(r)
    with np.errstate(invalid="ignore"):
        diff = np.where(finite, np.abs(c - r), 0.0)
        excess = diff - tol.atol - tol.rtol * np.abs(np.where(finite, r, 0.0))
        if oracle is not None and oracle.shape == ref.shape:
            o = oracle.astype(np.float64)
            off = np.where(finite & np.isfinite(o), np.abs(c - o), 0.0)
            excess = np.where(np.isfinite(o), off - oracle_allowance(ref, oracle), excess)
        else:
            oracle = None
    special_differs = ~finite & ~((np.isnan(r) & np.isnan(c)) | (r == c))
    bad = special_differs | (finite & ~np.isfinite(c)) | (finite & (excess > 0))
    if not bad.any():
        return None
    abs_err = float(np.max(diff)) if diff.size else 0.0
    big = finite & (np.abs(np.where(finite, r, 0.0)) > tol.atol)
    rel_err = float(np.max(diff[big] / np.abs(r[big]))) if big.any() else 0.0
    worst = np.unravel_index(int(np.argmax(np.where(bad, np.nan_to_num(excess, nan=np.inf), -np.inf))), r.shape)
    index = [int(i) for i in worst]
    if (finite & ~np.isfinite(c)).any():
        what = "holds NaN or Inf where the reference is finite"
    elif oracle is not None:
        what = f"{int(bad.sum())} of {bad.size} elements further from float64 than eager float32 allows"
    else:
        what = f"{int(bad.sum())} of {bad.size} elements out of tolerance"
    versus = f", float64 {float(oracle[worst]):.9g}" if oracle is not None else ""
    return abs_err, rel_err, index, (f"{what}; worst at {tuple(index)}: {float(c[worst]):.9g} vs reference "
                                     f"{float(r[worst]):.9g}{versus}")


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


def _why(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0][:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _joined(notes: list[str]) -> str | None:
    return "; ".join(notes) if notes else None


def _finite(x: float) -> float | None:
    return x if np.isfinite(x) else None

"""reduce(): delta-debug a graph that fails on a target down to a small subgraph that still fails, and write it
out as a standalone repro script (what `crossgraph reduce` does; Polygraphy's `debug reduce` for our targets).

A candidate is a set of kept nodes of the original graph and the nodes it returns. Every value a kept node reads
from outside the set is pinned to its eager value, keeping the role it had: a value computed from the graph's
inputs becomes an input of the subgraph, a value computed from weights alone a constant (a buffer, which Inductor
freezes and ONNX embeds as it did the weights it came from; pinning activations as constants instead would let
Inductor's freezing fold away the very ops under suspicion). Sizes and other scalars are pinned as literals, so a
dynamic graph reduces to a static one. The candidate is written as an nn.Module (torch.fx code, ops spelled
`torch.ops.aten.*` / `torch.ops.crossgraph.*`) and captured with `crossgraph.graphs.capture`, exactly as the repro
script does: what was reduced is what the script runs.

A candidate fails when lowering it to the target and running it is out of tolerance (or non-finite where eager is
finite) against the candidate run eagerly, or, when the original failure was an exception, raises the same
exception type. The search:
1. start: cut after the first divergent node (compiler.localize), which becomes the only output. Without one (the
   target raised, or only the outputs diverge, or the cut alone passes) bisect for the shortest failing prefix of
   the graph in topological order instead, and cut after its last node.
2. window: bisect the window start (everything before it pinned), trying that node alone first.
3. outputs and pins: drop outputs the failure does not need; try pinning each remaining node in turn, dropping
   what no longer feeds an output.
Each attempt is one lowering (Inductor: one ~10 s compile); identical candidates are tried once; `max_steps` bounds
the attempts, and running out keeps the smallest failing candidate. A bug in one op costs localization plus one
attempt; an exception in one op of GPT-2 tiny (140 ops), about ten.
"""
from __future__ import annotations

import base64
import dataclasses
import io
import operator
import re
import textwrap
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from crossgraph.compiler.localize import LOCALIZABLE, compare_values, first_divergence, reference_values
from crossgraph.compiler.lower import lower
from crossgraph.compiler.subject import to_numpy
from crossgraph.compiler.tolerance import Tolerance, TolerancePolicy
from crossgraph.graphs import Graph, InputError, capture
from crossgraph.graphs.errors import first_line

DEFAULT_MAX_STEPS = 20
"""Attempts (lowerings) a reduction may spend: seconds on jax and onnx, minutes on Inductor."""

INLINE_BYTES = 16 * 1024
"""Tensors up to this size are embedded in the script as base64; larger ones go to a sibling .pt file."""


class NothingToReduce(InputError):
    """The graph does not fail on the target (the CLI can exit 0 on this rather than 2)."""


class _OutOfSteps(Exception):
    """The step budget is spent: the reduction ends with the smallest failing candidate found so far."""


@dataclasses.dataclass(frozen=True)
class _Outcome:
    """One attempt: does the candidate fail, and how."""

    fails: bool
    message: str


@dataclasses.dataclass(frozen=True)
class _Candidate:
    """A candidate tried: the nodes it keeps and returns, its module, captured graph (None when it could not be
    captured), inputs, output tolerances and outcome."""

    kept: frozenset[str]
    outputs: tuple[str, ...]
    module: torch.fx.GraphModule
    graph: Graph | None
    inputs: tuple[torch.Tensor, ...]
    tolerances: list[Tolerance]
    outcome: _Outcome


@dataclasses.dataclass(frozen=True)
class Reduction:
    """The smallest failing subgraph found: its Graph and inputs, node counts (call_function nodes) before and
    after, the verdict, the attempts spent, and the module it was captured from (what `write_script` prints)."""

    graph: Graph
    inputs: tuple[torch.Tensor, ...]
    target: str
    original_nodes: int
    remaining_nodes: int
    message: str
    steps: int
    module: torch.fx.GraphModule
    tolerances: list[Tolerance]
    expected_error: str | None = None

    def write_script(self, path: str | Path) -> Path:
        """Write a standalone script that captures the subgraph, lowers it to the target, compares it with eager
        and exits 1 when the failure reproduces, 0 when it does not (2 on an unrelated error). Tensors over
        INLINE_BYTES go to a .pt file beside it, of the same name."""
        path = Path(path)
        large: dict[str, torch.Tensor] = {}

        def literal(name: str, tensor: torch.Tensor) -> str:
            tensor = tensor.detach().contiguous()
            if tensor.numel() * tensor.element_size() > INLINE_BYTES:
                large[name] = tensor
                return f"stored({name!r})"
            buffer = io.BytesIO()
            torch.save(tensor, buffer)
            data = base64.b64encode(buffer.getvalue()).decode()
            lines = "\n".join(f'        "{data[i:i + 100]}"' for i in range(0, len(data), 100))
            return f"tensor(\n{lines})"

        buffers = "".join(f"\n        self.register_buffer({name!r}, {literal(name, value)})"
                          for name, value in self.module.named_buffers())
        inputs = "".join(f"{literal(f'input_{i}', t)}, " for i, t in enumerate(self.inputs))
        forward = "\n".join(re.sub(r";  (?:\w+ = )+None$", "", line.rstrip())
                            for line in self.module.code.strip().splitlines())
        doc = textwrap.fill(self.message, 110, break_long_words=False).replace("\\", "\\\\").replace('"""', "'''")
        text = _SCRIPT.format(
            doc=doc, name=self.graph.name, target=self.target, ops=self.remaining_nodes,
            original=self.original_nodes, filename=path.name, error=repr(self.expected_error),
            tolerances=", ".join(repr(t) for t in self.tolerances), buffers=buffers,
            forward=textwrap.indent(forward, "    "), inputs=inputs.rstrip(" "))
        from crossgraph.compiler.artifact import atomic_path, write_atomically

        if large:  # each file whole or not at all (the tensors first: the script loads them)
            with atomic_path(path.with_suffix(".pt")) as tmp:
                torch.save(large, tmp)
        write_atomically(path, text)
        return path


def reduce(graph: Graph, target: str, inputs: Sequence[torch.Tensor], policy: TolerancePolicy | None = None, *,
           max_steps: int = DEFAULT_MAX_STEPS) -> Reduction:
    """Reduce `graph` (as given to `target`, after passes) to a small subgraph that still fails there; see the
    module docstring for the search. NothingToReduce when the graph does not fail on `target`; InputError when
    it cannot be lowered there at all (an unsupported op: its error already names the op and the line)."""
    if max_steps < 1:
        raise InputError(f"max_steps must be at least 1, got {max_steps}")
    if target not in LOCALIZABLE:
        raise InputError(f"cannot reduce on target '{target}'; reducible targets: {', '.join(LOCALIZABLE)}")
    search = _Search(graph, target, tuple(inputs), policy or TolerancePolicy(), max_steps)
    best = search.run()
    assert best.graph is not None  # every failing candidate was captured
    count = sum(1 for n in best.graph.fx.nodes if n.op == "call_function")
    original = sum(1 for n in graph.fx.nodes if n.op == "call_function")
    spent = f" (stopped after {max_steps} attempts; it may reduce further)" if search.exhausted else ""
    message = f"{target} fails on {count} of the graph's {original} ops{search.where}{spent}: {best.outcome.message}"
    return Reduction(best.graph, best.inputs, target, original, count, message, search.steps, best.module,
                     best.tolerances, search.error)


class _Search:
    """The reduction's state: reference values, which nodes are data (computed from inputs), tried candidates."""

    def __init__(self, graph: Graph, target: str, inputs: tuple[torch.Tensor, ...], policy: TolerancePolicy,
                 max_steps: int) -> None:
        self.graph, self.target, self.inputs, self.policy, self.max_steps = graph, target, inputs, policy, max_steps
        self.reference = reference_values(graph, inputs)
        self.nodes = {n.name: n for n in graph.fx.nodes}
        user = {n.name for n in graph.input_nodes()}
        self.data: set[str] = set()
        for node in graph.fx.nodes:
            if node.name in user or any(a.name in self.data for a in node.all_input_nodes):
                self.data.add(node.name)
        self.tried: dict[tuple[frozenset[str], tuple[str, ...]], _Candidate] = {}
        self.steps, self.exhausted = 0, False
        self.error: str | None = None
        self.where = ""

    # ---- the search ----------------------------------------------------------------------------------------
    def run(self) -> _Candidate:
        try:
            start = self._start()
            best = self._window(start) if start else None
            if best is None:  # no divergent node, or the cut after it passes (it failed in context only)
                best = self._window(self._narrow())
            if best is None:
                raise NothingToReduce(f"graph '{self.graph.name}' fails on {self.target}, but no cut of it does")
            best = self._drop_outputs(best)
            best = self._pin_each(best)
        except _OutOfSteps:
            self.exhausted = True
            failing = [c for c in self.tried.values() if c.outcome.fails]
            if not failing:
                raise InputError(f"no failing subgraph found on {self.target} within {self.max_steps} attempts; "
                                 "raise max_steps")
            best = min(failing, key=lambda c: len(c.kept))
        return best

    def _start(self) -> tuple[str, ...] | None:
        """The first divergent node as the only output, or None when no node diverges (the failure is an
        exception, whose type then becomes what a failing candidate must raise, or shows only in outputs)."""
        try:
            found = first_divergence(self.graph, self.target, self.inputs, self.policy, self.reference)
        except InputError:
            raise
        except Exception as exc:  # the target failed to lower or run the probe: reduce that error instead
            self.error = type(exc).__name__
            return None
        if found is None:
            return None
        self.where = f", ending at node '{found.node.name}' ({found.node.target})" + (
            f" from {found.provenance}" if found.provenance else "")
        return (found.node.name,)

    def _narrow(self) -> tuple[str, ...]:
        """Without a divergent node: bisect for the shortest failing prefix of the graph (in topological order,
        returning every value it hands on), and return its last node when that alone fails, else what the prefix
        returns. NothingToReduce when the whole graph does not fail."""
        self.where = ""
        order = [n.name for n in self.graph.fx.nodes if self._computable(n)]

        def prefix(end: int) -> _Candidate:
            kept = frozenset(order[:end + 1])
            leaves = self._leaves(kept)
            return self._attempt(self._closed(kept, leaves), leaves)

        if not prefix(len(order) - 1).outcome.fails:
            raise NothingToReduce(f"graph '{self.graph.name}' does not fail on {self.target} "
                                  f"({prefix(len(order) - 1).outcome.message})")
        low, high = -1, len(order) - 1
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (low, mid) if prefix(mid).outcome.fails else (mid, high)
        best = prefix(high)
        own = tuple(o for o in best.outputs if self._owner(o) == order[high])
        if own and self._attempt(self._closed(best.kept, own), own).outcome.fails:
            self.where = f", ending at node '{order[high]}' ({self.nodes[order[high]].target})"
            return own
        return best.outputs

    def _leaves(self, kept: frozenset[str]) -> tuple[str, ...]:
        """The tensors computed from `kept` that something outside it reads (the graph's outputs included)."""
        return tuple(n.name for n in self.graph.fx.nodes
                     if self._computed(n, kept) and isinstance(self.reference.get(n.name), torch.Tensor)
                     and any(self._owner(u.name) not in kept for u in n.users))

    def _window(self, outputs: tuple[str, ...]) -> _Candidate | None:
        """The latest window start (nodes before it pinned) that still fails: the last node alone first, then
        the whole cut, then bisection between them. None when even the whole cut passes."""
        ancestors = self._ancestors(outputs)
        order = [n.name for n in self.graph.fx.nodes if n.name in ancestors]

        def attempt(start: int) -> _Candidate:
            return self._attempt(self._closed(set(order[start:]), outputs), outputs)

        last = attempt(len(order) - 1)
        if last.outcome.fails:
            return last
        best = attempt(0)
        if not best.outcome.fails:
            return None
        low, high = 0, len(order) - 1
        while high - low > 1:
            mid = (low + high) // 2
            found = attempt(mid)
            low, high, best = (mid, high, found) if found.outcome.fails else (low, mid, best)
        return best

    def _drop_outputs(self, best: _Candidate) -> _Candidate:
        """With several outputs (no divergent node was found), keep only those the failure needs."""
        for name in best.outputs:
            if len(best.outputs) > 1:
                rest = tuple(o for o in best.outputs if o != name)
                found = self._attempt(self._closed(best.kept, rest), rest)
                best = found if found.outcome.fails else best
        return best

    def _pin_each(self, best: _Candidate) -> _Candidate:
        """Try pinning each kept node that is not an output, in order; keep every pin that still fails."""
        outputs = {self._owner(o) for o in best.outputs}
        for node in self.graph.fx.nodes:
            if node.name in best.kept and node.name not in outputs:
                found = self._attempt(self._closed(best.kept - {node.name}, best.outputs), best.outputs)
                best = found if found.outcome.fails else best
        return best

    # ---- candidates ----------------------------------------------------------------------------------------
    def _computable(self, node: torch.fx.Node) -> bool:
        """A node a candidate may keep: a call producing a tensor or a tuple of them (getitems follow their
        tuple: computed when it is kept, pinned when it is not)."""
        value = self.reference.get(node.name)
        return node.op == "call_function" and node.target is not operator.getitem and (
            isinstance(value, torch.Tensor) or (isinstance(value, (tuple, list)) and bool(value)
                                                and all(isinstance(v, torch.Tensor) for v in value)))

    def _owner(self, name: str) -> str:
        """The computable node behind `name`: a getitem's tuple, else the node itself."""
        node = self.nodes[name]
        return node.args[0].name if node.op == "call_function" and node.target is operator.getitem else name

    def _computed(self, node: torch.fx.Node, kept: frozenset[str]) -> bool:
        """Whether a candidate keeping `kept` computes `node` (else it is pinned)."""
        return node.op == "call_function" and self._owner(node.name) in kept

    def _ancestors(self, outputs: tuple[str, ...]) -> frozenset[str]:
        """Every computable node the outputs depend on, their own included."""
        seen: set[str] = set()
        pending = [self.nodes[o] for o in outputs]
        while pending:
            node = pending.pop()
            if node.name not in seen:
                seen.add(node.name)
                pending.extend(node.all_input_nodes)
        return frozenset(n for n in seen if self._computable(self.nodes[n]))

    def _closed(self, kept: set[str] | frozenset[str], outputs: tuple[str, ...]) -> frozenset[str]:
        """`kept` plus the outputs' nodes, minus the nodes no output needs through kept nodes."""
        kept = set(kept) | {self._owner(o) for o in outputs}
        needed: set[str] = set()
        pending = [self._owner(o) for o in outputs]
        while pending:
            name = pending.pop()
            if name not in needed:
                needed.add(name)
                owners = (self._owner(s.name) for s in self.nodes[name].all_input_nodes)
                pending.extend(o for o in owners if o in kept)
        return frozenset(needed)

    def _attempt(self, kept: frozenset[str], outputs: tuple[str, ...]) -> _Candidate:
        """Build, lower and run one candidate (once: attempts are cached), spending one step."""
        key = (kept, outputs)
        if key not in self.tried:
            if self.steps >= self.max_steps:
                raise _OutOfSteps()
            self.steps += 1
            self.tried[key] = self._try(kept, outputs, *self._build(kept, outputs))
        return self.tried[key]

    def _build(self, kept: frozenset[str], outputs: tuple[str, ...]
               ) -> tuple[torch.fx.GraphModule, tuple[torch.Tensor, ...], list[Tolerance]]:
        """The candidate as a GraphModule: pinned data as placeholders, pinned weights as buffers, pinned
        scalars as literals."""
        computed = [n for n in self.graph.fx.nodes if self._computed(n, kept)]
        pins = list(dict.fromkeys(a for n in computed for a in n.all_input_nodes if not self._computed(a, kept)))
        fx, root = torch.fx.Graph(), torch.nn.Module()
        env: dict[torch.fx.Node, Any] = {}
        inputs = []
        for node in pins:  # placeholders first: they are the forward's parameters
            if isinstance(self.reference[node.name], torch.Tensor) and node.name in self.data:
                env[node] = fx.placeholder(node.name)
                inputs.append(self.reference[node.name])
        for node in pins:
            value = self.reference[node.name]
            if node not in env and isinstance(value, torch.Tensor):
                root.register_buffer(f"c_{node.name}", value.detach())
                env[node] = fx.get_attr(f"c_{node.name}")
            elif node not in env:
                env[node] = value
        for node in computed:
            env[node] = fx.node_copy(node, lambda a: env[a])
        fx.output(tuple(env[self.nodes[o]] for o in outputs))
        tolerances = [self.policy.for_output(self.target, self.reference[o].dtype, op=self.nodes[o].target)
                      for o in outputs]
        return torch.fx.GraphModule(root, fx, class_name="Repro"), tuple(inputs), tolerances

    def _try(self, kept: frozenset[str], outputs: tuple[str, ...], module: torch.fx.GraphModule,
             inputs: tuple[torch.Tensor, ...], tolerances: list[Tolerance]) -> _Candidate:
        """Capture the module as the repro script will, lower it, run it, compare it with its eager run."""
        def done(outcome: _Outcome, graph: Graph | None = None) -> _Candidate:
            return _Candidate(kept, outputs, module, graph, inputs, tolerances, outcome)

        try:
            graph = capture(module, inputs, name=f"{self.graph.name}_reduced")
        except Exception as exc:  # a candidate torch.export cannot capture is skipped, not a failure
            return done(_Outcome(False, f"cannot be captured: {first_line(exc)}"))
        expected = [to_numpy(t) for t in graph(*inputs)]
        try:
            got = lower(graph, self.target)(*inputs)
        except Exception as exc:  # a lowering error is the failure only when it is the original one
            name = type(exc).__name__
            return done(_Outcome(name == self.error, f"{name}: {first_line(exc)}"), graph)
        if self.error is not None:
            return done(_Outcome(False, f"runs without raising {self.error}"), graph)
        for i, (ref, cand, tol) in enumerate(zip(expected, got, tolerances)):
            found = compare_values(ref, np.asarray(cand), tol)
            if found is not None:
                return done(_Outcome(True, f"output {i}: {found[3]} (max abs err {found[0]:.3g}, atol "
                                           f"{tol.atol:g}, rtol {tol.rtol:g})"), graph)
        return done(_Outcome(False, "agrees with eager"), graph)


_SCRIPT = '''\
"""crossgraph reduce: {target} diverges from eager on {name}, a {ops}-op subgraph of a {original}-op graph.

{doc}

Run `python {filename}`: exit 1 when the failure reproduces, 0 when it does not, 2 on an unrelated error.
"""

import base64
import io
import sys
import traceback
from math import inf, nan  # noqa: F401  (names the generated forward may use)
from pathlib import Path

import torch
from torch import device  # noqa: F401

import crossgraph.graphs  # noqa: F401  (registers the torch.ops.crossgraph.* dialect ops)
from crossgraph.compiler import Tolerance
from crossgraph.compiler.localize import compare_values
from crossgraph.compiler.lower import lower
from crossgraph.graphs import capture

TARGET = "{target}"
EXPECTED_ERROR = {error}
TOLERANCES = [{tolerances}]


def tensor(data: str) -> torch.Tensor:
    return torch.load(io.BytesIO(base64.b64decode(data)))


def stored(name: str) -> torch.Tensor:
    return torch.load(Path(__file__).with_suffix(".pt"))[name]


class Repro(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__(){buffers}

{forward}


INPUTS = ({inputs})


def main() -> int:
    graph = capture(Repro(), INPUTS, name="{name}")
    expected = [t.double().numpy() if t.is_floating_point() else t.numpy() for t in graph(*INPUTS)]
    try:
        got = lower(graph, TARGET)(*INPUTS)
    except Exception as exc:
        if type(exc).__name__ != EXPECTED_ERROR:
            traceback.print_exc()
            return 2
        print(f"reproduced: {{TARGET}} raised {{type(exc).__name__}}: {{exc}}")
        return 1
    for i, (ref, cand, tol) in enumerate(zip(expected, got, TOLERANCES)):
        found = compare_values(ref, cand, tol)
        if found is not None and EXPECTED_ERROR is None:
            print(f"reproduced: output {{i}} on {{TARGET}}: {{found[3]}} (max abs err {{found[0]:.3g}}, "
                  f"atol {{tol.atol:g}}, rtol {{tol.rtol:g}})")
            return 1
    print(f"not reproduced: {{TARGET}} agrees with eager")
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''

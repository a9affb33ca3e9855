"""PassManager: runs passes in order, verifies the graph after each one, optionally proves outputs unchanged.

Each pass gets its own copy of the graph (weights shared), so the input graph and every intermediate graph stay
intact: the input is the parity reference, and a failure names the first pass that broke something.
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from crossgraph.graphs import Graph, InputError
from crossgraph.graphs.annotations import META_KEY
from crossgraph.passes import verify
from crossgraph.passes.errors import PassError
from crossgraph.passes.registry import Pass, PassFn, as_pass, resolve


@dataclasses.dataclass(frozen=True)
class PassRecord:
    """What one pass did: its time (verification apart), node counts before and after, whether it changed."""

    name: str
    seconds: float
    verify_seconds: float
    nodes_before: int
    nodes_after: int
    changed: bool


@dataclasses.dataclass(frozen=True)
class PassRun:
    """The graph after all passes, and one record per pass in the order they ran."""

    graph: Graph
    records: tuple[PassRecord, ...]


class PassManager:
    """Runs `passes` (Pass objects, plain Graph -> Graph functions, or registered names) over a Graph."""

    def __init__(self, passes: str | Iterable[Pass | PassFn | str], *, verify: bool = True,
                 check_parity: bool = False, sample_inputs: Sequence[torch.Tensor] | None = None,
                 dump_dir: str | Path | None = None, atol: float = 1e-5, rtol: float = 1e-4) -> None:
        items = [passes] if isinstance(passes, str) else list(passes)
        self.passes = [q for p in items for q in (resolve(p) if isinstance(p, str) else [as_pass(p)])]
        self.verify = verify
        self.check_parity = check_parity
        self.sample_inputs = tuple(sample_inputs) if sample_inputs is not None else None
        self.dump_dir = Path(dump_dir) if dump_dir is not None else None
        self.atol, self.rtol = atol, rtol

    def run(self, graph: Graph) -> PassRun:
        """Apply every pass in order; raise PassError naming the first pass that fails a check."""
        inputs, reference = self._reference(graph) if self.check_parity else ((), [])
        self._dump(0, "input", graph)
        values = verify.ValueCheck(graph) if self.verify else None
        records: list[PassRecord] = []
        current, before = graph, _fingerprint(graph)
        for index, p in enumerate(self.passes, start=1):
            start = time.perf_counter()
            try:
                out = p(current)
            except Exception as exc:  # a pass may fail in any way; the error must name it
                raise PassError(p.name, f"raised {type(exc).__name__}: {exc}") from exc
            if not isinstance(out, Graph):
                raise PassError(p.name, f"returned a {type(out).__name__}, not a Graph")
            seconds = time.perf_counter() - start
            self._dump(index, p.name, out)
            start = time.perf_counter()
            problem = verify.first_problem(out, current, values) if values is not None else None
            if problem is None and self.check_parity:
                problem = self._parity_problem(out, inputs, reference)
            if problem:
                raise PassError(p.name, problem)
            after = _fingerprint(out)
            records.append(PassRecord(p.name, seconds, time.perf_counter() - start, len(current.fx.nodes),
                                      len(out.fx.nodes), after != before))
            current, before = out, after
        return PassRun(current, tuple(records))

    def _reference(self, graph: Graph) -> tuple[tuple[torch.Tensor, ...], list[torch.Tensor]]:
        """The sample inputs (given, or the capture's example inputs) and the input graph's outputs on them."""
        inputs = self.sample_inputs
        if inputs is None and graph.exported.example_inputs is not None:
            inputs = tuple(graph.exported.example_inputs[0])
        if inputs is None:
            raise InputError("check_parity needs sample_inputs: the graph keeps no example inputs")
        return inputs, graph(*inputs)

    def _parity_problem(self, graph: Graph, inputs: tuple[torch.Tensor, ...],
                        reference: list[torch.Tensor]) -> str | None:
        try:
            outputs = graph(*inputs)
        except Exception as exc:  # the rewritten graph may fail in any way at run time
            return f"left a graph that fails on the sample inputs: {type(exc).__name__}: {exc}"
        if len(outputs) != len(reference):
            return f"changed the number of outputs from {len(reference)} to {len(outputs)}"
        names = graph.output_names if len(graph.output_names) == len(outputs) else map(str, range(len(outputs)))
        for name, ref, got in zip(names, reference, outputs):
            problem = _mismatch(ref, got, self.atol, self.rtol)
            if problem:
                return f"changed output '{name}': {problem}"
        return None

    def _dump(self, index: int, name: str, graph: Graph) -> None:
        if self.dump_dir is not None:
            self.dump_dir.mkdir(parents=True, exist_ok=True)
            safe = re.sub(r"[^\w.-]", "_", name)
            (self.dump_dir / f"{index:02d}-{safe}.txt").write_text(graph.format() + "\n")


def _mismatch(ref: Any, got: Any, atol: float, rtol: float) -> str | None:
    """How `got` differs from `ref` beyond atol + rtol * |ref| (non-finite where ref is finite fails), or None."""
    if not isinstance(ref, torch.Tensor) or not isinstance(got, torch.Tensor):
        return None if ref == got else f"{ref!r} became {got!r}"
    if ref.shape != got.shape or ref.dtype != got.dtype:
        return f"{ref.dtype}{list(ref.shape)} became {got.dtype}{list(got.shape)}"
    if not (ref.is_floating_point() or ref.is_complex()):
        wrong = int((ref != got).sum())
        return f"{wrong} of {ref.numel()} values differ" if wrong else None
    wide = torch.complex128 if ref.is_complex() else torch.float64
    ref, got = ref.to(wide), got.to(wide)
    finite = torch.isfinite(ref)
    lost = int((finite & ~torch.isfinite(got)).sum())
    if lost:
        return f"{lost} non-finite values where the reference is finite"
    special = ~finite & ~((ref == got) | (torch.isnan(ref) & torch.isnan(got)))
    if special.any():
        return f"{int(special.sum())} values differ where the reference is inf or nan"
    err = (got - ref).abs().where(finite, 0)
    bad = err > atol + rtol * ref.abs()
    if not bad.any():
        return None
    rel = (err / ref.abs().clamp_min(torch.finfo(torch.float64).tiny))[bad].max()
    return (f"{int(bad.sum())} of {ref.numel()} values beyond atol={atol}, rtol={rtol} "
            f"(max abs err {float(err.max()):.3g}, max rel err {float(rel):.3g})")


def _fingerprint(graph: Graph) -> tuple[Any, ...]:
    """Everything a pass may change (nodes, annotations, signature, state tensors), to tell if it changed any."""
    ep = graph.exported
    return (tuple((n.format_node(), repr(n.meta.get(META_KEY))) for n in graph.fx.nodes),
            repr(ep.graph_signature),
            tuple((k, id(v)) for k, v in ep.state_dict.items()),
            tuple((k, id(v)) for k, v in ep.constants.items()))

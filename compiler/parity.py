"""check(): run a model on each target and compare with the model run eagerly as written."""

from __future__ import annotations

import dataclasses
import time
import traceback
from typing import Any, Sequence

import torch

from crossgraph.compiler.compare import compare_outputs
from crossgraph.compiler.pipeline import Passes, Pipelines, passes_for
from crossgraph.compiler.report import ParityReport, TargetResult
from crossgraph.compiler.subject import Subject
from crossgraph.compiler.targets import Target, resolve
from crossgraph.compiler.tolerance import TolerancePolicy
from crossgraph.graphs import FunctionalModel, Graph, InputError, capture


def check(model: torch.nn.Module | FunctionalModel, example_inputs: Sequence[torch.Tensor],
          targets: Sequence[str] | str | None = ("eager", "flax"), *, policy: TolerancePolicy | None = None,
          graph: Graph | None = None, dynamic_shapes: Any = None, spec: str = "",
          passes: Passes = None) -> ParityReport:
    """Capture `model` (unless `graph` is given), run each target's passes (its default pipeline unless `passes`
    says otherwise, see compiler.pipeline), run it, and compare every output with the model run eagerly as
    written. Bad input (targets, pass names, capture) raises InputError; a target that fails in its passes, its
    lowering or its run is reported as `error`, never raised."""
    chosen = resolve(targets)
    pass_lists = {t.name: passes_for(t.name, passes) for t in chosen}
    policy = policy or TolerancePolicy()
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    start = time.perf_counter()
    graph = graph or capture(model, inputs, dynamic_shapes)
    capture_seconds = time.perf_counter() - start
    subject = Subject(model, graph, inputs)
    reference = subject.reference(inputs)
    pipelines = Pipelines(graph)
    results = {t.name: _run_target(t, subject, reference, policy, pipelines, pass_lists[t.name]) for t in chosen}
    return ParityReport(spec=spec or graph.name, targets=results, capture_seconds=capture_seconds,
                        output_names=graph.output_names)


def _run_target(target: Target, subject: Subject, reference: list[Any], policy: TolerancePolicy,
                pipelines: Pipelines, pass_names: tuple[str, ...]) -> TargetResult:
    reason = target.unavailable(subject)
    if reason:
        return TargetResult(status="skipped", error=reason)
    start = time.perf_counter()
    try:
        subject = dataclasses.replace(subject, graph=pipelines.run(pass_names)[0])
        outputs = target.run(subject, subject.example_inputs)
    except Exception as exc:  # a target failing to lower or run is a result to report, not a crash
        detail = "" if isinstance(exc, InputError) else "\n" + "".join(traceback.format_exception(exc)[-3:])
        return TargetResult(status="error", seconds=time.perf_counter() - start,
                            error=f"{type(exc).__name__}: {exc}{detail}".strip(),
                            bad_input=isinstance(exc, InputError))
    seconds = time.perf_counter() - start
    names = subject.graph.output_names
    if len(names) != len(reference):
        names = [str(i) for i in range(len(reference))]
    tols = [policy.for_output(target.name, r.dtype) for r in reference]
    verdict = compare_outputs(names, reference, outputs, tols)
    return TargetResult(status="pass" if verdict.ok else "fail", max_abs_err=verdict.max_abs_err,
                        max_rel_err=verdict.max_rel_err, atol=verdict.atol, rtol=verdict.rtol,
                        seconds=seconds, error=verdict.message)


__all__ = ["check"]

"""check(): run a model on each target and compare with the model run eagerly as written.

Each target is prepared once (passes, lowering, compile) and run on every example: the factory's example inputs
first, then inputs drawn from the graph's shapes, dtypes and dynamic ranges (compiler.strategies). On a failure,
lowered targets say where: the first node whose value leaves tolerance (compiler.localize) and, on request,
the first pass after which the target fails (compiler.pass_bisect).
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from typing import Any, Sequence

import numpy as np
import torch

from crossgraph.compiler.judge import judge
from crossgraph.compiler.pass_bisect import bisect_passes
from crossgraph.compiler.pipeline import Passes, Pipelines, passes_for
from crossgraph.compiler.report import CaseResult, ParityReport, TargetResult
from crossgraph.compiler.subject import Subject, to_numpy
from crossgraph.compiler.targets import Target, resolve
from crossgraph.compiler.tolerance import TolerancePolicy
from crossgraph.graphs import FunctionalModel, Graph, InputError, capture


@dataclasses.dataclass(frozen=True)
class Example:
    """One set of inputs, the model's own outputs on them, and (where it ran) the float64 oracle's outputs
    (None for a leaf without one; see compiler.oracle)."""

    inputs: tuple[torch.Tensor, ...]
    reference: list[np.ndarray]
    oracle: list[np.ndarray | None] | None = None
    oracle_note: str | None = None


def check(model: torch.nn.Module | FunctionalModel, example_inputs: Sequence[torch.Tensor],
          targets: Sequence[str] | str | None = ("eager", "flax"), *, policy: TolerancePolicy | None = None,
          graph: Graph | None = None, dynamic_shapes: Any = None, spec: str = "",
          passes: Passes = None, examples: int = 1, seed: int = 0, localize: bool = True,
          bisect: bool = False, oracle: bool = True,
          kwargs: dict[str, torch.Tensor | None] | None = None) -> ParityReport:
    """Capture `model` called as `model(*example_inputs, **kwargs)` (unless `graph` is given; None values in
    `kwargs` mean "not passed"), run each target's passes (its default pipeline unless `passes`
    says otherwise, see compiler.pipeline), and compare every output with the model run eagerly as written, on
    `examples` input sets (the example inputs, then `examples - 1` drawn with `seed`). A failing lowered target
    gets its first divergent node (`localize`) and, with `bisect`, the first pass that breaks it. With `oracle`,
    float32 outputs are also run in float64 and judged against that run (compiler.compare's "float64-oracle"
    rule); without it, or where the model runs in float64 neither as written nor as captured, by the tolerance
    policy alone (the report's `oracle` says which, and why). Bad input
    (targets, pass names, capture, examples < 1) raises InputError; a target that fails in its passes, its
    lowering or its run is reported as `error`, never raised."""
    if examples < 1:
        raise InputError(f"examples must be at least 1, got {examples}")
    chosen = resolve(targets)
    pass_lists = {t.name: passes_for(t.name, passes) for t in chosen}
    policy = policy or TolerancePolicy()
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    start = time.perf_counter()
    graph = graph or capture(model, inputs, dynamic_shapes, kwargs=kwargs)
    capture_seconds = time.perf_counter() - start
    inputs = graph.flatten(inputs, kwargs)
    subject = Subject(model, graph, inputs)
    cases = [_example(subject, i, x, oracle) for i, x in enumerate(_inputs(graph, inputs, examples, seed))]
    pipelines = Pipelines(graph)
    results = {t.name: _run_target(t, subject, cases, policy, pipelines, pass_lists[t.name], localize, bisect)
               for t in chosen}
    return ParityReport(spec=spec or graph.name, targets=results, capture_seconds=capture_seconds,
                        output_names=graph.output_names, policy=_described(policy, oracle), seed=seed,
                        oracle_note=next((c.oracle_note for c in cases if c.oracle_note), None))


def _described(policy: TolerancePolicy, oracle: bool) -> dict[str, Any]:
    """The policy as reports show it, with the float64 oracle's constants when it judges."""
    from crossgraph.compiler.compare import ORACLE_BLOCK, ORACLE_MULTIPLE
    out = policy.describe()
    out["oracle"] = {"multiple": ORACLE_MULTIPLE, "block": ORACLE_BLOCK} if oracle else None
    return out


def _inputs(graph: Graph, example: tuple[torch.Tensor, ...], n: int, seed: int) -> list[tuple[torch.Tensor, ...]]:
    """The example inputs, then n - 1 drawn ones (hypothesis is imported only when drawing)."""
    if n == 1:
        return [example]
    from crossgraph.compiler import strategies
    return [example, *strategies.draw(strategies.inputs(graph, example), n - 1, seed=seed)]


def _example(subject: Subject, index: int, inputs: tuple[torch.Tensor, ...], oracle: bool) -> Example:
    """An input set with the model's outputs on it (and the float64 oracle's, with `oracle`); a model that
    raises on drawn inputs is bad input (its captured shapes promised more than the model takes), said with
    the shapes."""
    try:
        reference = subject.reference(inputs)
    except Exception as exc:
        if index == 0:
            raise
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
        raise InputError(f"the model raised on drawn example {index} (input shapes {shapes}): "
                         f"{type(exc).__name__}: {exc}; the graph's dynamic ranges allow these shapes, so "
                         "narrow them (torch.export.Dim min/max) or check without --dynamic") from exc
    if not oracle:
        return Example(inputs, reference)
    run = subject.oracle(inputs, reference)
    return Example(inputs, reference, [None if o is None else to_numpy(o) for o in run.outputs], run.note)


def _error(exc: Exception) -> tuple[str, bool]:
    """A failure's report text, and whether it was the user's input (which changes the exit code)."""
    detail = "" if isinstance(exc, InputError) else "\n" + "".join(traceback.format_exception(exc)[-3:])
    return f"{type(exc).__name__}: {exc}{detail}".strip(), isinstance(exc, InputError)


def _run_target(target: Target, subject: Subject, cases: list[Example], policy: TolerancePolicy,
                pipelines: Pipelines, pass_names: tuple[str, ...], localize: bool, bisect: bool) -> TargetResult:
    reason = target.unavailable(subject)
    if reason:
        return TargetResult(status="skipped", error=reason)
    start = time.perf_counter()
    try:
        subject = dataclasses.replace(subject, graph=pipelines.run(pass_names)[0])
        runner = target.prepare(subject)
    except Exception as exc:  # a target failing to lower is a result to report, not a crash
        error, bad_input = _error(exc)
        return TargetResult(status="error", seconds=time.perf_counter() - start, error=error, bad_input=bad_input)
    prepare_seconds = time.perf_counter() - start
    results = [_run_case(i, target, subject, runner, case, policy) for i, case in enumerate(cases)]
    result = _summarize(results, prepare_seconds)
    failed = next((i for i, r in enumerate(results) if r.status != "pass"), None)
    if failed is not None and target.lowered:
        if localize and results[failed].status == "fail":
            result.first_divergent_node = _localize(target, subject.graph, cases[failed].inputs, policy)
        if bisect and pass_names:
            result.bisect = bisect_passes(target, dataclasses.replace(subject, graph=pipelines.graph), pass_names,
                                          cases[failed].inputs, cases[failed].reference, policy, pipelines)
    return result


def _run_case(index: int, target: Target, subject: Subject, runner: Any, case: Example,
              policy: TolerancePolicy) -> CaseResult:
    start = time.perf_counter()
    try:
        outputs = runner(case.inputs)
    except Exception as exc:  # a run that raises is this example's result
        return CaseResult(example=index, status="error", seconds=time.perf_counter() - start,
                          error=_error(exc)[0])
    seconds = time.perf_counter() - start
    v = judge(target.name, subject.graph, case.reference, outputs, policy, case.oracle)
    return CaseResult(example=index, status="pass" if v.ok else "fail", max_abs_err=v.max_abs_err,
                      max_rel_err=v.max_rel_err, mean_abs_err=v.mean_abs_err, p99_abs_err=v.p99_abs_err,
                      worst=v.worst, atol=v.atol, rtol=v.rtol, seconds=seconds, error=v.message,
                      oracle_abs_err=v.oracle_abs_err, reference_oracle_abs_err=v.reference_oracle_abs_err,
                      rules=v.rules)


def _summarize(cases: list[CaseResult], prepare_seconds: float) -> TargetResult:
    """The target's verdict over its examples: the first failing example decides status, error and worst
    element; the error statistics are the maxima over examples."""
    shown = next((c for c in cases if c.status != "pass"), None) or max(
        cases, key=lambda c: -1.0 if c.max_abs_err is None or np.isnan(c.max_abs_err) else c.max_abs_err)

    def worst(field: str) -> float | None:
        values = [getattr(c, field) for c in cases if getattr(c, field) is not None]
        return None if not values else float(np.max(values))  # NaN wins: a non-finite run shows as null

    status = "error" if any(c.status == "error" for c in cases) else shown.status
    if status == "error":
        shown = next(c for c in cases if c.status == "error")
    label = f"example {shown.example}: " if len(cases) > 1 and shown.status != "pass" else ""
    return TargetResult(status=status, max_abs_err=worst("max_abs_err"), max_rel_err=worst("max_rel_err"),
                        mean_abs_err=worst("mean_abs_err"), p99_abs_err=worst("p99_abs_err"), worst=shown.worst,
                        atol=shown.atol, rtol=shown.rtol,
                        seconds=prepare_seconds + sum(c.seconds for c in cases),
                        error=f"{label}{shown.error}" if shown.error else None,
                        cases=cases if len(cases) > 1 else [], oracle_abs_err=worst("oracle_abs_err"),
                        reference_oracle_abs_err=worst("reference_oracle_abs_err"), rules=shown.rules)


def _localize(target: Target, graph: Graph, inputs: tuple[torch.Tensor, ...],
              policy: TolerancePolicy) -> dict[str, Any] | None:
    """The first divergent node; a localization that itself fails says so in the dict rather than raising."""
    from crossgraph.compiler.localize import first_divergent_node
    try:
        return first_divergent_node(graph, target.name, inputs, policy)
    except Exception as exc:  # localization is a diagnosis: its failure must not hide the verdict
        return {"node": None, "message": f"could not localize: {type(exc).__name__}: {exc}"}


__all__ = ["check"]

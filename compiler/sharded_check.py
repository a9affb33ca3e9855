"""The sharded parity check (`crossgraph check SPEC --mesh ...`): each sharding plan the mesh allows, run on JAX
GSPMD (simulated CPU devices) and on torch DTensor (gloo processes), against the same graph run unsharded, forward
and training step (loss and every weight's gradient) under the loss that fits the outputs: next-token cross entropy
for logits over the token ids' vocabulary, else the outputs' mean square (the report says which, and why). Beside
each plan: the collectives propagation predicted and those XLA inserted into the compiled forward pass.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import torch

from crossgraph.compiler.compare import Comparison, compare_outputs
from crossgraph.compiler.report import ParityReport, TargetResult
from crossgraph.compiler.subject import to_numpy
from crossgraph.compiler.tolerance import TolerancePolicy
from crossgraph.graphs import CrossgraphError, Graph, InputError, capture
from crossgraph.graphs.sharding import Mesh
from crossgraph.passes.shard_plans import PLANS
from crossgraph.passes.shard_propagation import ShardingReport
from crossgraph.passes.sharding import shard

if TYPE_CHECKING:
    from crossgraph.compiler.dtensor import RunResult

ENGINES = ("jax", "dtensor")


def plans_for(mesh: Mesh) -> list[str]:
    """The plans whose mesh axes `mesh` has."""
    return [name for name, (axes, _, _) in PLANS.items() if set(axes) <= set(mesh.names)]


@dataclasses.dataclass
class ShardedReport:
    """Per plan and engine a parity verdict (`parity.targets` keyed "engine[plan]", "engine[plan] train"), each
    plan's propagation report, and the collectives XLA inserted for it."""

    mesh: Mesh
    parity: ParityReport
    predicted: dict[str, ShardingReport]
    xla: dict[str, collections.Counter[str]]
    loss: str | None = None
    """The training step's loss (compiler.dtensor.LOSSES), None when no training step ran."""
    loss_reason: str = ""

    @property
    def exit_code(self) -> int:
        return self.parity.exit_code

    def table(self) -> str:
        lines = [self.parity.table(), ""]
        if self.loss is not None:
            lines += [f"training step loss: {self.loss} ({self.loss_reason})", ""]
        lines.append(f"collectives per forward pass on {self.mesh} (predicted | XLA):")
        for plan, report in self.predicted.items():
            xla = self.xla.get(plan)
            lines.append(f"  {plan:<5} {_counts(report.counts()):<32} | "
                         f"{_counts(xla) if xla is not None else 'not compiled'}"
                         f"   weights/device {report.weight_bytes:,} B of {report.unsharded_weight_bytes:,} B")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        out = self.parity.to_json()
        out["mesh"] = str(self.mesh)
        out["train_loss"] = None if self.loss is None else {"loss": self.loss, "reason": self.loss_reason}
        out["plans"] = {plan: {**report.to_json(), "xla_collectives": dict(self.xla.get(plan, {}))}
                        for plan, report in self.predicted.items()}
        return out


def _counts(counts: collections.Counter[str]) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none"


def check_sharded(model: Any, inputs: Sequence[torch.Tensor], mesh: Mesh, *, plans: Sequence[str] | None = None,
                  engines: Sequence[str] = ENGINES, policy: TolerancePolicy | None = None, train: bool = True,
                  spec: str = "", kwargs: dict[str, torch.Tensor | None] | None = None) -> ShardedReport:
    """Shard `model` (called as `model(*inputs, **kwargs)`) by each of `plans` (default: every plan `mesh`
    allows) and check each engine's sharded run against the unsharded one. Bad plans, meshes, engines and
    uneven splits raise InputError before anything runs."""
    policy = policy or TolerancePolicy()
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise InputError(f"unknown sharded engine(s) {', '.join(unknown)}; known: {', '.join(ENGINES)}")
    plans = list(plans) if plans else plans_for(mesh)
    if not plans:
        raise InputError(f"no sharding plan fits mesh {mesh}: plans use mesh axes named data and model")
    start = time.perf_counter()
    graph = capture(model, inputs, kwargs=kwargs)
    inputs = graph.flatten(inputs, kwargs)
    sharded = {plan: shard(graph, plan, mesh) for plan in plans}
    capture_seconds = time.perf_counter() - start
    prepared = next(iter(sharded.values()))[0]
    from crossgraph.compiler import dtensor  # torch.distributed.tensor: imported when a check runs, not by the CLI

    loss, reason = dtensor.choose_loss(prepared)
    loss = loss if train else None
    reference = dtensor.run_local(prepared, inputs, train=train, loss=loss)
    check = _Checker(prepared, reference, policy)
    results: dict[str, TargetResult] = {}
    xla: dict[str, collections.Counter[str]] = {}
    if "jax" in engines:
        _run_jax(sharded, inputs, loss, check, results, xla)
    if "dtensor" in engines:
        _run_dtensor(sharded, inputs, loss, check, results)
    parity = ParityReport(spec, results, capture_seconds=capture_seconds, policy=policy.describe())
    return ShardedReport(mesh, parity, {plan: report for plan, (_, report) in sharded.items()}, xla, loss,
                         reason if loss else "")


class _Checker:
    """Compares a sharded run's outputs, loss and gradients with the unsharded reference run."""

    def __init__(self, graph: Graph, reference: RunResult, policy: TolerancePolicy) -> None:
        self.names, self.policy = graph.output_names, policy
        self.refs = [_numpy(t) for t in reference.outputs]  # as numpy once, for every plan and engine
        self.grad_names = list(reference.grads)
        self.train_refs = ([_numpy(reference.loss), *(_numpy(g) for g in reference.grads.values())]
                           if reference.loss is not None else [])

    def outputs(self, engine: str, outputs: Sequence[Any], seconds: float) -> TargetResult:
        return _result(compare_outputs(self.names, self.refs, [_numpy(o) for o in outputs],
                                       [self.policy.for_output(engine, r.dtype) for r in self.refs]), seconds)

    def training(self, engine: str, loss: Any, grads: dict[str, Any], seconds: float) -> TargetResult:
        missing = sorted(set(self.grad_names) - set(grads))
        if missing:
            return TargetResult("fail", seconds=seconds, error=f"no gradient for {', '.join(missing)}")
        cands = [np.asarray(loss, dtype=np.float32), *(_numpy(grads[n]) for n in self.grad_names)]
        return _result(compare_outputs(["loss", *self.grad_names], self.train_refs, cands,
                                       [self.policy.for_output(engine, r.dtype) for r in self.train_refs]), seconds)


def _numpy(value: Any) -> np.ndarray:
    """A torch run's tensor (as every comparison takes it) or a JAX run's array or float, as numpy."""
    return to_numpy(value) if isinstance(value, torch.Tensor) else np.asarray(value)


def _result(verdict: Comparison, seconds: float) -> TargetResult:
    return TargetResult("pass" if verdict.ok else "fail", verdict.max_abs_err, verdict.max_rel_err, verdict.atol,
                        verdict.rtol, seconds, verdict.message, worst=verdict.worst,
                        mean_abs_err=verdict.mean_abs_err, p99_abs_err=verdict.p99_abs_err)


def _guarded(results: dict[str, TargetResult], name: str, run: Callable[[], TargetResult]) -> None:
    """Record `run()`'s verdict under `name`, or its failure as an error (bad input marked so)."""
    start = time.perf_counter()
    try:
        results[name] = run()
    except CrossgraphError as exc:
        results[name] = _error(exc, time.perf_counter() - start)


def _error(exc: CrossgraphError, seconds: float) -> TargetResult:
    """A run that raised: an error verdict, marked bad input for an InputError."""
    return TargetResult("error", seconds=seconds, error=str(exc), bad_input=isinstance(exc, InputError))


def _run_jax(sharded: dict[str, tuple[Graph, ShardingReport]], inputs: Sequence[torch.Tensor], loss: str | None,
             check: _Checker, results: dict[str, TargetResult], xla: dict[str, collections.Counter[str]]) -> None:
    from crossgraph.compiler import jaxlower

    reason = jaxlower.unavailable()
    if reason:
        for plan in sharded:
            results[f"jax[{plan}]"] = TargetResult("skipped", error=reason)
        return
    from crossgraph.compiler.jaxlower.sharding import ShardedJax, ensure_devices

    ensure_devices(next(iter(sharded.values()))[1].mesh.size)
    for plan, (graph, _) in sharded.items():
        runner = ShardedJax(graph)

        def forward() -> TargetResult:
            start = time.perf_counter()
            outputs = runner.run(inputs)
            result = check.outputs("jax", outputs, time.perf_counter() - start)
            xla[plan] = runner.collectives(inputs)
            return result

        def step() -> TargetResult:
            start = time.perf_counter()
            value, grads = runner.grads(inputs, loss)
            return check.training("jax", value, grads, time.perf_counter() - start)

        _guarded(results, f"jax[{plan}]", forward)
        if loss is not None:
            _guarded(results, f"jax[{plan}] train", step)


def _run_dtensor(sharded: dict[str, tuple[Graph, ShardingReport]], inputs: Sequence[torch.Tensor], loss: str | None,
                 check: _Checker, results: dict[str, TargetResult]) -> None:
    from crossgraph.compiler import dtensor

    start = time.perf_counter()
    names = [f"dtensor[{plan}]" for plan in sharded]
    try:
        runs = dtensor.run_sharded_many([(graph, inputs) for graph, _ in sharded.values()], train=loss is not None,
                                        loss=loss)
    except CrossgraphError as exc:
        results.update(dict.fromkeys(names, _error(exc, time.perf_counter() - start)))
        return
    seconds = (time.perf_counter() - start) / len(names)
    for name, run in zip(names, runs):
        results[name] = check.outputs("dtensor", run.outputs, seconds)
        if loss is not None:
            results[f"{name} train"] = check.training("dtensor", run.loss, run.grads, seconds)

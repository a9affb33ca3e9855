"""fuzz(): draw programs deterministically from a seed, check each on the targets, collect the disagreements.

Each program is captured once and checked with `compiler.check(..., passes="none")` against the program run
eagerly, under the default tolerance policy: the fuzzer tests the lowerings, not crossgraph's passes.

Every non-pass result is a finding: `fail` (numbers out of the default tolerance) and `error` (the target
raised), UnsupportedOpError included: generated programs use core ATen only, which every target is meant to
cover, so a missing translation is a gap to fix or to record upstream, not noise. A finding that matches a
registered known divergence (known.py) is reported as known; the others make `exit_code` 1.

A `skipped` result is no finding, but a run in which no program ran on any target (e.g. tensorrt without CUDA)
checked nothing: it stops after the first program every target skipped, and its `exit_code` is 2.

Inductor compiles ahead of time (~10 s a program on 2 CPU cores), so when other targets run too it checks only
every `inductor_every`-th program (0, k, 2k, ...); alone, it checks every program.
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Callable, Iterable, Iterator, Sequence

from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed

from crossgraph.compiler.fuzz.generator import programs
from crossgraph.compiler.fuzz.known import classify
from crossgraph.compiler.fuzz.program import Program
from crossgraph.compiler.fuzz.report import Finding, FuzzReport
from crossgraph.compiler.parity import check
from crossgraph.compiler.targets import resolve
from crossgraph.graphs import capture

DEFAULT_TARGETS = ("onnx", "jax", "inductor")
INDUCTOR_EVERY = 8
BATCH = 8
"""Programs drawn per hypothesis run; batch b is drawn with seed `seed * 1_000_003 + b`."""


def draw_programs(seed: int, max_ops: int = 12) -> Iterator[Program]:
    """An endless, deterministic sequence of distinct programs: batches drawn by hypothesis, repeats skipped."""
    seen: set[str] = set()
    for batch in itertools.count():
        for program in _draw_batch(seed * 1_000_003 + batch, max_ops):
            source = program.source()
            if source not in seen:
                seen.add(source)
                yield program


def _draw_batch(seed: int, max_ops: int) -> list[Program]:
    drawn: list[Program] = []

    @hypothesis_seed(seed)
    @settings(max_examples=BATCH, database=None, deadline=None, derandomize=False, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), verbosity=Verbosity.quiet)
    @given(programs(max_ops))
    def record(program: Program) -> None:
        drawn.append(program)

    record()
    return drawn


def fuzz(seconds: float, targets: Sequence[str] = DEFAULT_TARGETS, seed: int = 0, max_examples: int | None = None,
         *, max_ops: int = 12, inductor_every: int = INDUCTOR_EVERY,
         progress: Callable[[str], None] | None = None) -> FuzzReport:
    """Check programs drawn from `seed` on `targets` until `seconds` have passed (checked between programs) or
    `max_examples` programs have run, whichever comes first."""
    return run(itertools.islice(draw_programs(seed, max_ops), max_examples), targets, seconds=seconds, seed=seed,
               inductor_every=inductor_every, progress=progress)


def run(drawn: Iterable[Program], targets: Sequence[str] = DEFAULT_TARGETS, *, seconds: float = math.inf,
        seed: int = 0, inductor_every: int = INDUCTOR_EVERY,
        progress: Callable[[str], None] | None = None) -> FuzzReport:
    """Check the `drawn` programs in order on `targets` (see the module docstring for inductor) within `seconds`."""
    names = tuple(t.name for t in resolve(list(targets)))
    if inductor_every < 1:
        raise ValueError(f"inductor_every must be >= 1, got {inductor_every}")
    report = FuzzReport(seed=seed, targets=names, inductor_every=inductor_every)
    start = time.perf_counter()
    for index, program in enumerate(drawn):
        if time.perf_counter() - start >= seconds:
            break
        chosen = [t for t in names if t != "inductor" or names == ("inductor",) or index % inductor_every == 0]
        found = check_program(program, chosen, report, index)
        report.programs += 1
        if progress is not None:
            verdict = ", ".join(f"{f.target} {f.status}{' (known)' if f.known else ''}" for f in found) or "ok"
            progress(f"program {index}: {program.description()}: {verdict}")
        if chosen == list(names) and not found and report.nothing_ran:
            break  # every target skipped a program they all were given: none can run here, so none will
    report.seconds = time.perf_counter() - start
    return report


def runnable_targets() -> list[str]:
    """The lowered targets that can run here (what a fuzz run can check programs on)."""
    from crossgraph.compiler.lower import unavailable
    from crossgraph.compiler.targets import TARGETS

    return [name for name, target in TARGETS.items() if target.lowered and unavailable(name) is None]


def check_program(program: Program, targets: Sequence[str], report: FuzzReport, index: int = 0) -> list[Finding]:
    """Capture `program`, check it on `targets` with no passes, count each result in `report` and add its
    findings there; returns them."""
    source = program.source()
    try:
        model, inputs = program.model(), program.example_inputs()
        graph = capture(model, inputs)
        parity = check(model, inputs, list(targets), graph=graph, passes="none")
    except Exception as exc:  # the program itself failed: a generator bug, reported as a finding, never raised
        report.count("capture", "error")
        finding = Finding(index, "capture", "error", f"{type(exc).__name__}: {exc}", source)
        report.findings.append(finding)
        return [finding]
    ops = tuple(sorted(graph.op_histogram()))
    found = []
    for target, result in parity.targets.items():
        report.count(target, result.status)
        if result.status == "skipped":
            report.skip_reasons.setdefault(target, result.error or "")
        if result.status in ("fail", "error"):
            error = result.error or ""
            found.append(Finding(index, target, result.status, error, source, ops, classify(target, ops, error)))
    report.findings += found
    return found

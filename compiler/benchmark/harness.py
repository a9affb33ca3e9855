"""bench(): time a model on crossgraph's targets and on the peers a user would pick instead, in one process, at
several batch sizes; return the results as a JSON-ready dict (format `crossgraph.bench/1`)."""

from __future__ import annotations

import dataclasses
import datetime
import gc
import sys
import time
from typing import Any, Callable, Sequence

import torch
from torch.utils.flop_counter import FlopCounterMode

from crossgraph.compiler.benchmark import machine
from crossgraph.compiler.benchmark.runtimes import PEERS, TARGETS, Built, Case, Runtime
from crossgraph.compiler.benchmark.timing import Latency, PeakMemory, Runs, measure
from crossgraph.compiler.compare import compare_outputs
from crossgraph.compiler.pipeline import Passes, Pipelines, passes_for
from crossgraph.compiler.tolerance import TolerancePolicy
from crossgraph.graphs import FunctionalModel, InputError, capture
from crossgraph.graphs.capture import keyword_tensors

FORMAT = "crossgraph.bench/1"
DEFAULT_TARGETS = ("eager", "inductor", "onnx", "jax")
QUICK_RUNS = Runs(warmup=1, runs=3, min_seconds=0.0, max_runs=3, settle=0.0)


@dataclasses.dataclass(frozen=True)
class Settings:
    """What to time and how much."""

    targets: tuple[str, ...] = DEFAULT_TARGETS
    peers: tuple[str, ...] = tuple(PEERS)
    batch_sizes: tuple[int, ...] = (1, 8)
    runs: Runs = Runs()
    threads: int = 1
    quick: bool = False
    passes: Passes = None  # each target's default pipeline; see compiler.pipeline

    def runtimes(self) -> list[Runtime]:
        """The chosen targets then the chosen peers; unknown names are an InputError."""
        bad_targets = [t for t in self.targets if t not in TARGETS]
        bad_peers = [p for p in self.peers if p not in PEERS]
        if bad_targets:
            hint = " (the Flax reference is timed as the peer flax-jit)" if "flax" in bad_targets else ""
            raise InputError(f"unknown bench target(s) {', '.join(bad_targets)}{hint}; known: {', '.join(TARGETS)}")
        if bad_peers:
            raise InputError(f"unknown peer(s) {', '.join(bad_peers)}; known: {', '.join(PEERS)}")
        if not self.targets and not self.peers:
            raise InputError("nothing to time: no targets and no peers")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise InputError(f"batch sizes must be positive integers, got {list(self.batch_sizes)}")
        for target in self.targets:
            passes_for(target, self.passes)  # unknown pass names fail here, before anything is built
        return [TARGETS[t] for t in dict.fromkeys(self.targets)] + [PEERS[p] for p in dict.fromkeys(self.peers)]


def resize_batch(inputs: Sequence[torch.Tensor], batch: int) -> tuple[torch.Tensor, ...]:
    """The example inputs at another batch size: dim 0 of every input is the batch; rows repeat the example's."""
    sizes = sorted({t.shape[0] if t.dim() else -1 for t in inputs})
    if not inputs or len(sizes) != 1 or sizes[0] < 1:
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
        raise InputError(f"bench sets the batch size on dim 0 of every input, but the example inputs ({shapes}) "
                         "do not share one dim 0")
    index = torch.arange(batch) % sizes[0]
    return tuple(t.index_select(0, index).contiguous() for t in inputs)


def count_flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations of one call, as torch's FlopCounterMode counts them (matmuls, convolutions,
    attention); elementwise work is not counted, so achieved FLOP/s is a lower bound."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def bench(model: torch.nn.Module | FunctionalModel, example_inputs: Sequence[torch.Tensor], settings: Settings,
          *, spec: str = "", progress: bool = True, kwargs: dict[str, torch.Tensor | None] | None = None
          ) -> dict[str, Any]:
    """Time every chosen runtime at every batch size (see Settings) and return the results; the model is called
    as `model(*example_inputs, **kwargs)`.

    The caller pins threads first (`machine.pin_threads`), before jax or ONNX Runtime start their pools."""
    runtimes = settings.runtimes()
    policy = TolerancePolicy()
    description = machine.describe(settings.threads)
    peak = machine.matmul_peak(size=512 if settings.quick else 2048)
    results: dict[str, Any] = {
        "format": FORMAT, "spec": spec, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"),
        "machine": description, "matmul_peak_flops": peak,
        "settings": {"targets": list(settings.targets), "peers": list(settings.peers),
                     "batch_sizes": list(settings.batch_sizes), "quick": settings.quick,
                     "passes": {t: list(passes_for(t, settings.passes)) for t in settings.targets},
                     "runs": dataclasses.asdict(settings.runs)},
        "batches": {}}
    bar = _progress(len(settings.batch_sizes) * (len(runtimes) + 1), progress)
    try:
        for batch in settings.batch_sizes:
            bar.set_description(f"batch {batch}: capture")
            keyword = keyword_tensors(kwargs)
            resized = resize_batch((*example_inputs, *keyword.values()), batch)
            args, keyword = resized[:len(example_inputs)], dict(zip(keyword, resized[len(example_inputs):]))
            start = time.perf_counter()
            graph = capture(model, args, kwargs=keyword)
            capture_seconds = time.perf_counter() - start
            inputs = graph.flatten(args, keyword)
            case = Case(model, graph, inputs, settings.threads, settings.passes, Pipelines(graph))
            flops = count_flops(lambda: graph(*inputs))
            reference = case.subject.reference(inputs)
            results.setdefault("model", {"name": graph.name, "parameters": graph.num_parameters(),
                                         "parameter_bytes": sum(t.numel() * t.element_size()
                                                                for t in graph.parameters().values())})
            bar.update()
            entries, built = {}, {}
            for runtime in runtimes:
                bar.set_description(f"batch {batch}: build {runtime.name}")
                entries[runtime.name], built[runtime.name] = _build(runtime, case, reference, policy,
                                                                    capture_seconds)
                bar.update()
            built = {name: b for name, b in built.items() if b is not None}
            bar.set_description(f"batch {batch}: timing {len(built)} runtimes")
            latencies = measure({name: b.call for name, b in built.items()}, settings.runs, bar.refresh)
            for name in list(built):  # each runtime is released once finished, before the next batch builds
                entries[name].update(_finish(built.pop(name), latencies[name], batch, flops, peak))
            gc.collect()
            results["batches"][str(batch)] = {
                "inputs": [f"{str(t.dtype).removeprefix('torch.')}{list(t.shape)}" for t in inputs],
                "capture_seconds": capture_seconds, "flops": flops, "runtimes": entries,
                "speedups": speedups(entries)}
    finally:
        bar.close()
    return results


def _build(runtime: Runtime, case: Case, reference: list[Any], policy: TolerancePolicy,
           capture_seconds: float) -> tuple[dict[str, Any], Built | None]:
    """Build one runtime and make its first call, under a memory high-water mark; check its outputs."""
    entry: dict[str, Any] = {"kind": runtime.kind, "description": runtime.description}
    reason = runtime.unavailable(case)
    if reason:
        return entry | {"status": "skipped", "error": reason}, None
    phases = {"capture": capture_seconds} if runtime.kind == "target" else {}
    try:
        with PeakMemory() as memory:
            built = runtime.build(case)
            with built.phases("first_run"):
                outputs = built.call()
    except Exception as exc:  # one runtime failing is a result to report; the others still run
        return entry | {"status": "error", "error": f"{type(exc).__name__}: {_first_line(exc)}"}, None
    phases.update(built.phases)
    names = case.graph.output_names
    if len(names) != len(reference):
        names = [str(i) for i in range(len(reference))]
    verdict = compare_outputs(names, reference, outputs,
                              [policy.for_output(runtime.policy, r.dtype) for r in reference])
    return entry | {
        "status": "ok", "error": None,
        "first_call": {"seconds": sum(phases.values()), "phases": phases},
        "peak_rss_bytes": memory.peak_bytes, "rss_growth_bytes": memory.growth_bytes,
        "parity": {"status": "pass" if verdict.ok else "fail", "max_abs_err": verdict.max_abs_err,
                   "message": verdict.message}}, built


def _finish(built: Built, latency: Latency, batch: int, flops: int, peak: float) -> dict[str, Any]:
    """Latency, throughput (samples/s), achieved FLOP/s and its share of the matmul peak, and the file size."""
    median = latency.median
    try:
        file_bytes = built.file_bytes()
    except Exception as exc:  # saving is part of a target: a failure there is reported like any other
        return {"status": "error", "error": f"saving the model failed: {type(exc).__name__}: {_first_line(exc)}"}
    return {"latency": latency.to_json(), "throughput": batch / median, "achieved_flops": flops / median,
            "fraction_of_peak": flops / median / peak, "file_bytes": file_bytes}


def speedups(entries: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """target -> peer -> the peer's median latency over the target's (above 1: the target is faster)."""
    timed = {name: e for name, e in entries.items() if e["status"] == "ok"}
    return {t: {p: pe["latency"]["median"] / te["latency"]["median"] for p, pe in timed.items()
                if pe["kind"] == "peer"}
            for t, te in timed.items() if te["kind"] == "target"}


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


def _progress(total: int, enabled: bool) -> Any:
    """A tqdm bar on stderr (silent when disabled or when stderr is not a terminal)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=None if enabled else True, file=sys.stderr, unit="step", leave=False)

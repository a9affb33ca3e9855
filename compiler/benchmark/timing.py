"""Steady-state latency (warm-up, then timed runs: median and p90) and peak resident memory of a block."""

from __future__ import annotations

import dataclasses
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


@dataclasses.dataclass(frozen=True)
class Runs:
    """How much to time: `warmup` untimed calls each, then rounds of one timed call each until every call has
    `runs` samples and the rounds took `min_seconds` per call, stopping at `max_runs`. Before each timed call
    the harness sleeps `settle` seconds, so the previous runtime's spinning worker threads (ONNX Runtime's,
    OpenMP's, XLA's) have gone idle and do not steal the CPUs, and then makes `lead_in` untimed calls of the same
    runtime, so each timed call is a steady-state one, as in a process serving one model (ONNX Runtime's worker
    threads spin for longer than `settle` on some machines: the first call after another session's can be
    25 ms slower at 2 threads, a fixed cost that hides a 60 ms model's speed)."""

    warmup: int = 2
    runs: int = 10
    min_seconds: float = 1.0
    max_runs: int = 200
    settle: float = 0.02
    lead_in: int = 0

    def __post_init__(self) -> None:
        if (self.warmup < 0 or self.runs < 1 or self.max_runs < self.runs or self.min_seconds < 0
                or self.settle < 0 or self.lead_in < 0):
            raise ValueError(f"invalid run settings {self}: need warmup >= 0, 1 <= runs <= max_runs, "
                             "min_seconds >= 0, settle >= 0, lead_in >= 0")


@dataclasses.dataclass(frozen=True)
class Latency:
    """Seconds per call over the timed runs."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p90(self) -> float:
        return percentile(self.samples, 90)

    def to_json(self) -> dict[str, Any]:
        return {"median": self.median, "p90": self.p90, "mean": statistics.fmean(self.samples),
                "min": min(self.samples), "runs": len(self.samples), "samples": list(self.samples)}


def percentile(values: tuple[float, ...] | list[float], q: float) -> float:
    """The q-th percentile with linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def measure(calls: Mapping[str, Callable[[], Any]], runs: Runs,
            tick: Callable[[], None] | None = None) -> dict[str, Latency]:
    """Time each call (which must not return before its work is done) after `runs.warmup` untimed calls each.

    The timed calls go in rounds, one of each per round, so a change in the machine's load while the benchmark
    runs falls on every runtime alike and the ratios between them stay fair."""
    for call in calls.values():
        for _ in range(runs.warmup):
            call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    began = time.perf_counter()
    rounds = 0
    while rounds < runs.max_runs and (rounds < runs.runs
                                      or time.perf_counter() - began < runs.min_seconds * len(calls)):
        for name, call in calls.items():
            time.sleep(runs.settle)
            for _ in range(runs.lead_in):
                call()
            start = time.perf_counter()
            call()
            samples[name].append(time.perf_counter() - start)
        rounds += 1
        if tick is not None:
            tick()
    return {name: Latency(tuple(times)) for name, times in samples.items()}


class PeakMemory:
    """Peak resident memory while the block runs. On Linux the kernel's high-water mark is reset on entry, so
    `peak_bytes` is this block's own peak; elsewhere it is the process's peak so far (`exact` is False)."""

    def __init__(self) -> None:
        self.start_bytes = 0
        self.peak_bytes = 0
        self.exact = False

    def __enter__(self) -> "PeakMemory":
        self.exact = _reset_high_water_mark()
        self.start_bytes = _status_kib("VmRSS") * 1024 if self.exact else 0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.peak_bytes = _status_kib("VmHWM") * 1024 if self.exact else _process_peak_bytes()

    @property
    def growth_bytes(self) -> int:
        """How far above its starting resident size the block went (0 where that cannot be known)."""
        return max(0, self.peak_bytes - self.start_bytes) if self.exact else 0


def _reset_high_water_mark() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return _status_kib("VmHWM") > 0
    except OSError:
        return False


def _status_kib(field: str) -> int:
    for line in _STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _process_peak_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes, Linux KiB

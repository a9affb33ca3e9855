"""The machine a benchmark runs on: thread pinning, a description for every results file, and its measured fp32
matrix-multiply peak (so achieved FLOP/s can be read as a fraction of what this machine can do)."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import time
from typing import Any

import torch

from crossgraph.graphs import InputError

LIBRARIES = ("torch", "jax", "jaxlib", "flax", "onnx", "onnxscript", "onnxruntime", "onnxruntime-gpu", "numpy",
             "transformers", "torch-tensorrt")
"""Versions recorded in every results file (those installed)."""


def schedulable_cpus() -> list[int]:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def pin_threads(threads: int) -> list[int]:
    """Run on `threads` CPUs: the process affinity (which XLA and ONNX Runtime size their pools by, when set
    before they start), torch's intra-op pool and OpenMP. Returns the CPUs chosen."""
    cpus = schedulable_cpus()
    if threads < 1 or threads > len(cpus):
        raise InputError(f"--threads {threads}: this process may use 1 to {len(cpus)} CPUs")
    chosen = cpus[:threads]
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, chosen)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch.set_num_threads(threads)
    return chosen


def cpu_model() -> str:
    """The CPU's marketing name (from /proc/cpuinfo on Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_bytes() -> int | None:
    """Total physical memory, or None where it cannot be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def describe(threads: int) -> dict[str, Any]:
    """Everything a reader needs to know which machine produced a number."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "threads": threads,
            "memory_bytes": memory_bytes(), "gpu": gpu, "os": platform.platform(),
            "python": platform.python_version(), "libraries": library_versions()}


def slug(description: dict[str, Any]) -> str:
    """A file-name-safe machine name: the CPU model and the thread count, e.g. "amd-epyc-2t"."""
    name = re.sub(r"\((r|tm)\)|cpu|processor|@.*$|\d+-core", "", description["cpu"].lower())
    name = re.sub(r"[^a-z0-9]+", "-", name).strip("-") or "cpu"
    return f"{name}-{description['threads']}t"


def results_stem(description: dict[str, Any], when: datetime.date | None = None) -> str:
    """`<machine>-<date>`, the name of a results file."""
    return f"{slug(description)}-{(when or datetime.date.today()).isoformat()}"


def matmul_peak(size: int = 2048, runs: int = 10) -> float:
    """This machine's fp32 matrix-multiply rate in FLOP/s: the fastest of `runs` torch.mm calls on two
    size x size matrices (after one warm-up), at the current thread setting. Compilers that prepack weights
    (Inductor with freezing) can beat it by a few percent."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times)

"""crossgraph's benchmark harness: every target against the tools a user would pick instead, in one process,
with the machine recorded (`crossgraph bench`; scripts and results in the repository's bench/ folder)."""

from crossgraph.compiler.benchmark.harness import DEFAULT_TARGETS, FORMAT, QUICK_RUNS, Settings, bench, resize_batch
from crossgraph.compiler.benchmark.machine import pin_threads, results_stem, schedulable_cpus
from crossgraph.compiler.benchmark.render import load, markdown, write
from crossgraph.compiler.benchmark.runtimes import PEERS, TARGETS
from crossgraph.compiler.benchmark.timing import Runs

__all__ = ["DEFAULT_TARGETS", "FORMAT", "PEERS", "QUICK_RUNS", "Runs", "Settings", "TARGETS", "bench", "load",
           "markdown", "pin_threads", "resize_batch", "results_stem", "schedulable_cpus",
           "write"]

"""crossgraph.compiler: lower Graphs to runtimes and check their numerical parity."""

from crossgraph.compiler.compare import Comparison, compare_array, compare_outputs
from crossgraph.compiler.parity import check
from crossgraph.compiler.report import ParityReport, TargetResult
from crossgraph.compiler.targets import TARGETS, Target
from crossgraph.compiler.tolerance import Tolerance, TolerancePolicy

__all__ = ["Comparison", "ParityReport", "TARGETS", "Target", "TargetResult", "Tolerance", "TolerancePolicy",
           "check", "compare_array", "compare_outputs"]

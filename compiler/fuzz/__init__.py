"""crossgraph.compiler.fuzz: random valid core-ATen programs checked on every lowering, disagreements triaged.

`programs()` draws programs (generator.py), `fuzz()` checks them until a time budget runs out (runner.py) and
returns a FuzzReport (report.py); disagreements that belong upstream are listed in known.py.
"""

from crossgraph.compiler.fuzz.generator import programs
from crossgraph.compiler.fuzz.known import KNOWN, KnownDivergence
from crossgraph.compiler.fuzz.program import Leaf, Program, Step
from crossgraph.compiler.fuzz.report import Finding, FuzzReport
from crossgraph.compiler.fuzz.runner import check_program, draw_programs, fuzz, run, runnable_targets

__all__ = ["KNOWN", "Finding", "FuzzReport", "KnownDivergence", "Leaf", "Program", "Step", "check_program",
           "draw_programs", "fuzz", "programs", "run", "runnable_targets"]

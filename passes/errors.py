"""PassError: a pass failed, or left a graph that does not verify or no longer computes the same thing."""

from __future__ import annotations

from crossgraph.graphs.errors import CrossgraphError


class PassError(CrossgraphError):
    """A pass raised, broke the graph's invariants, or changed its outputs; the message names the pass."""

    def __init__(self, pass_name: str, problem: str) -> None:
        self.pass_name, self.problem = pass_name, problem
        super().__init__(f"pass '{pass_name}' {problem}")

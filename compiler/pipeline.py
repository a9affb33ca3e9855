"""Which passes run before each target: its default pipeline, the user's `--passes`, or none (`"none"`).

The eager target has no default pipeline: it runs the graph as captured, to prove capture kept the meaning.
Pipelines are run once per distinct pass list and shared between targets that ask for the same one.
"""

from __future__ import annotations

import time
from typing import Sequence

from crossgraph.graphs import Graph
from crossgraph.passes import PassManager, PassRun, expand

DEFAULTS: dict[str, str] = {"inductor": "serve-inductor", "onnx": "serve-onnx", "jax": "jax",
                            "tensorrt": "serve-inductor"}
"""Target -> the pipeline it runs unless told otherwise."""

GRAPHLESS = frozenset({"flax"})
"""Targets that run the model's own reference rather than the graph, so no passes apply to them."""

Passes = str | Sequence[str] | None
"""None: each target's default; "none" or an empty list: no passes; else pass or pipeline names."""


def passes_for(target: str, passes: Passes) -> tuple[str, ...]:
    """The pass names `target` runs under the `passes` setting (pipelines expanded, unknown names refused)."""
    if passes is None:
        names = expand([DEFAULTS[target]]) if target in DEFAULTS else ()
    else:
        listed = [n.strip() for n in (passes.split(",") if isinstance(passes, str) else passes) if n.strip()]
        names = () if listed in ([], ["none"]) else expand(listed)
    return () if target in GRAPHLESS else names


class Pipelines:
    """The captured graph after each distinct pass list, run on first request and kept (errors included)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self._runs: dict[tuple[str, ...], tuple[PassRun | None, float, Exception | None]] = {}

    def run(self, names: tuple[str, ...]) -> tuple[Graph, float]:
        """The graph after `names` and the seconds the passes took when they ran; raises what they raised."""
        if not names:
            return self.graph, 0.0
        if names not in self._runs:
            start = time.perf_counter()
            try:
                self._runs[names] = (PassManager(names).run(self.graph), time.perf_counter() - start, None)
            except Exception as exc:  # kept so every target asking for this pipeline reports the same failure
                self._runs[names] = (None, time.perf_counter() - start, exc)
        result, seconds, error = self._runs[names]
        if error is not None:
            raise error
        assert result is not None
        return result.graph, seconds

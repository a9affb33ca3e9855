"""Calibration for static int8: observe what enters each linear layer over the user's batches, then derive the
uint8 scale and zero point `quantize.quantize_static` fixes in the graph.

The observers are PyTorch's own (`torch.ao.quantization.observer`: MinMaxObserver, or HistogramObserver, which
picks the range that minimizes the quantization error of the histogram), attached to the input of every linear
`quantize.linears` finds. The graph is run by a torch.fx Interpreter over its exported program, node by node, so
nothing is inserted into the Graph itself and the graph that is calibrated is the one that is quantized.
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, Sequence

import torch
from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver, ObserverBase
from torch.fx import Node

from crossgraph.graphs import Graph, InputError
from crossgraph.passes import program
from crossgraph.passes.quantize import linears

Calibration = dict[str, tuple[float, int]]
"""Linear node name -> the uint8 (scale, zero point) of its input."""

OBSERVERS = {"minmax": MinMaxObserver, "histogram": HistogramObserver}


class _Observing(torch.fx.Interpreter):
    """Runs the program and shows each watched node's input activation to its observer first."""

    def __init__(self, graph: Graph, observers: dict[Node, ObserverBase]) -> None:
        super().__init__(graph.exported.graph_module)
        self.observers = observers

    def run_node(self, n: Node) -> Any:
        if n in self.observers:
            x = n.args[1] if n.target == torch.ops.aten.addmm.default else n.args[0]
            self.observers[n](self.env[x].detach().float())
        return super().run_node(n)


def _terminal() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def calibrate(graph: Graph, batches: Iterable[Sequence[torch.Tensor]], *, observer: str = "minmax",
              progress: bool = True) -> Calibration:
    """The (scale, zero point) of every linear's input over `batches` (each a tuple of the graph's inputs),
    with a progress bar over them unless `progress` is False."""
    from tqdm import tqdm

    if observer not in OBSERVERS:
        raise InputError(f"unknown observer {observer!r}; known: {', '.join(OBSERVERS)}")
    observers = {node: OBSERVERS[observer](dtype=torch.quint8, qscheme=torch.per_tensor_affine)
                 for node, _ in linears(graph)}
    if not observers:
        raise InputError(f"graph '{graph.name}' has no linear layer with a stored weight to calibrate")
    interpreter, seen = _Observing(graph, observers), 0
    with torch.no_grad():
        # a bar only on a terminal: in a log or CI output its carriage returns are noise
        for batch in tqdm(batches, desc="calibrating", unit="batch", disable=not progress or not _terminal()):
            interpreter.run(*program.call_args(graph, batch))
            seen += 1
    if not seen:
        raise InputError("calibration needs at least one batch")
    return {node.name: _qparams(obs) for node, obs in observers.items()}


def _qparams(obs: ObserverBase) -> tuple[float, int]:
    """The observer's uint8 scale and zero point as plain numbers (what the graph stores as op arguments)."""
    scale, zero = obs.calculate_qparams()
    return float(scale.reshape(-1)[0]), int(zero.reshape(-1)[0])

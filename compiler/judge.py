"""Judge one run of a target: its outputs against the reference under the tolerance policy.

Each output's tolerance comes from its dtype, the target and the op family of the node that produced it. A float32
output with a float64 run beside it (compiler.oracle) is judged against that run (compare's "float64-oracle"
rule, with the tolerance as its floor), unless the user set that output's tolerance themselves.
"""

from __future__ import annotations

import operator
from typing import Sequence

import numpy as np
import torch

from crossgraph.compiler.compare import Comparison, compare_outputs
from crossgraph.compiler.tolerance import TolerancePolicy
from crossgraph.graphs import Graph


_aten = torch.ops.aten
_PASS_THROUGH = {operator.getitem, _aten.view.default, _aten.reshape.default, _aten._unsafe_view.default,
                 _aten.clone.default, _aten.permute.default, _aten.transpose.int, _aten.t.default,
                 _aten.squeeze.dim, _aten.squeeze.dims, _aten.unsqueeze.default, _aten.expand.default,
                 _aten.alias.default}
"""Ops that only pick or re-lay-out a value: an output's family is that of the op behind them."""


def producer(node: object) -> object:
    """The op that computed `node`'s value, looking through getitem and views; None for inputs and constants."""
    while getattr(node, "op", None) == "call_function" and node.target in _PASS_THROUGH and node.args:
        node = node.args[0]
    return node.target if getattr(node, "op", None) == "call_function" else None


def output_ops(graph: Graph) -> list[object]:
    """The op that produced each output (see `producer`)."""
    return [producer(n) for n in graph.fx.output_node().args[0]]


def judge(target: str, graph: Graph, reference: Sequence[np.ndarray], outputs: Sequence[np.ndarray],
          policy: TolerancePolicy, oracle: Sequence[np.ndarray | None] | None = None) -> Comparison:
    """Compare `outputs` of `target` running `graph` with `reference`, output by output; `oracle` holds the
    float64 run's outputs (None where an output has none)."""
    names = graph.output_names if len(graph.output_names) == len(reference) else [
        str(i) for i in range(len(reference))]
    ops = output_ops(graph)
    if len(ops) != len(reference):
        ops = [None] * len(reference)
    tols = [policy.for_output(target, r.dtype, op=op) for r, op in zip(reference, ops)]
    if oracle is not None and len(oracle) == len(reference):
        oracle = [o if o is not None and policy.oracle_applies(target, r.dtype, op=op) else None
                  for o, r, op in zip(oracle, reference, ops)]
    return compare_outputs(names, reference, outputs, tols, oracle)

"""fuse_rms_norm: Llama's RMSNorm, as captured, becomes one crossgraph.rms_norm.

    %pow = aten.pow.Tensor_Scalar(%x, 2)
    %mean = aten.mean.dim(%pow, [-1], True)
    %add = aten.add.Tensor(%mean, 1e-05)
    %rsqrt = aten.rsqrt.default(%add)                  ->    %y = crossgraph.rms_norm.default(%x, %w, 1e-05)
    %mul = aten.mul.Tensor(%x, %rsqrt)
    %y = aten.mul.Tensor(%w, %mul)

(with casts to float32 and back around the normalization when x is not float32). The pattern is
models/llama.py's `rms_norm`, which is Hugging Face's `LlamaRMSNorm.forward` op for op. eps is a literal of the
captured graph, so the pattern is traced once per eps and weight dtype the graph holds. The metadata assert that
`.to(x.dtype)` leaves on `x * rsqrt` is dropped first where the fake values prove it: it would pin that node.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch.fx import Node

from crossgraph.graphs import Graph
from crossgraph.passes import program
from crossgraph.passes.registry import register
from crossgraph.passes.rewrite import drop_proven_asserts, inputs_are_nodes, replace_pattern

aten = torch.ops.aten


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


@functools.lru_cache(maxsize=None)
def _rule(eps: float) -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
    """(pattern, replacement) for one eps; cached, so the traced pattern is too."""
    return (lambda x, weight: _rms_norm(x, weight, eps),
            lambda x, weight: torch.ops.crossgraph.rms_norm(x, weight, eps))


def _epsilon(rsqrt: Node) -> float | None:
    """eps of `rsqrt(mean + eps)`, or None."""
    add = rsqrt.args[0]
    if isinstance(add, Node) and add.target == aten.add.Tensor and isinstance(add.args[1], float):
        return add.args[1]
    return None


@register("fuse_rms_norm", "fuses RMSNorm (mean of squares, rsqrt, weight) into crossgraph.rms_norm")
def fuse_rms_norm(graph: Graph) -> Graph:
    """Replace every RMSNorm of the graph's weight dtypes by the dialect op."""
    epsilons: set[float] = set()
    for rsqrt in graph.fx.find_nodes(op="call_function", target=aten.rsqrt.default):
        eps = _epsilon(rsqrt)
        if eps is not None:
            epsilons.add(eps)
            drop_proven_asserts(graph, rsqrt.users)  # `.to(x.dtype)` checks x * rsqrt: it would pin that node
    dtypes = sorted({t.dtype for t in program.constant_inputs(graph).values() if t.is_floating_point()}, key=str)
    for eps in sorted(epsilons):
        pattern, replacement = _rule(eps)
        for dtype in dtypes:
            example = [torch.ones(2, 8, dtype=dtype), torch.ones(8, dtype=dtype)]
            replace_pattern(graph, pattern, replacement, example, match_filters=[inputs_are_nodes])
    return graph

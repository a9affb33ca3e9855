"""fuse_add_layer_norm: a residual add feeding a layer norm becomes one crossgraph.add_layer_norm.

    %sum = aten.add.Tensor(%x, %r)                                  %f = crossgraph.add_layer_norm.default(
    %ln = aten.native_layer_norm.default(%sum, [32], %w, %b, 1e-05)  ->          %x, %r, %w, %b, 1e-05)
    %y = getitem(%ln, 0)                                            %y = getitem(%f, 0)
    %z = aten.add.Tensor(%sum, %h)     # the residual stream        %sum = getitem(%f, 1)
                                                                    %z = aten.add.Tensor(%sum, %h)

The add's other users (the next residual add of a pre-norm block, GPT-2's) read the op's second output; in a
post-norm block (BERT's) the sum has no other users. The pattern is `F.layer_norm(x + r, ...)`, traced once per
(normalized size, eps, dtype, bias or not) the graph holds, as those are literals of the captured graph; only
norms over the last dimension match (the dialect op normalizes the last dimension).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.fx import Node

from crossgraph.graphs import Graph
from crossgraph.passes.registry import register
from crossgraph.passes.rewrite import inputs_are_nodes, replace_pattern

aten = torch.ops.aten

_Key = tuple[int, float, torch.dtype, bool]  # normalized size, eps, dtype, whether there is a bias


@functools.lru_cache(maxsize=None)
def _rule(size: int, eps: float, bias: bool) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """(pattern, replacement) for one set of literals; cached, so the traced pattern is too."""
    if bias:
        return (lambda x, r, w, b: _add_norm(x, r, w, b, size, eps),
                lambda x, r, w, b: torch.ops.crossgraph.add_layer_norm(x, r, w, b, eps))
    return (lambda x, r, w: _add_norm(x, r, w, None, size, eps),
            lambda x, r, w: torch.ops.crossgraph.add_layer_norm(x, r, w, None, eps))


def _add_norm(x: torch.Tensor, r: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, size: int,
              eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    total = x + r
    return F.layer_norm(total, (size,), w, b, eps), total


def _candidates(graph: Graph) -> set[_Key]:
    """The literals of every native_layer_norm over the last dim, with a weight, whose input is an add."""
    found: set[_Key] = set()
    for node in graph.fx.find_nodes(op="call_function", target=aten.native_layer_norm.default):
        source, shape, weight, bias, eps = node.args
        if (isinstance(source, Node) and source.target == aten.add.Tensor and len(shape) == 1
                and isinstance(shape[0], int) and isinstance(weight, Node)):
            found.add((shape[0], eps, source.meta["val"].dtype, bias is not None))
    return found


@register("fuse_add_layer_norm", "fuses a residual add and the layer norm after it into crossgraph.add_layer_norm")
def fuse_add_layer_norm(graph: Graph) -> Graph:
    """Replace every add -> layer norm over the last dim by the dialect op (sum still available as output 1)."""
    for size, eps, dtype, bias in sorted(_candidates(graph), key=str):
        pattern, replacement = _rule(size, eps, bias)
        example = [torch.ones(2, size, dtype=dtype)] * 2 + [torch.ones(size, dtype=dtype)] * (2 if bias else 1)
        replace_pattern(graph, pattern, replacement, example, match_filters=[inputs_are_nodes])
    return graph

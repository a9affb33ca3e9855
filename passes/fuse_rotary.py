"""fuse_rotary: the rotate-half rotary embedding of queries and keys becomes one crossgraph.rotary_embedding.

    %x1 = aten.slice.Tensor(%x, 3, 0, 4)      (or getitem 0 and 1 of
    %x2 = aten.slice.Tensor(%x, 3, 4, max)     aten.split_with_sizes(%x, [4, 4], -1))
    %xc = aten.mul.Tensor(%x, %cos)                           %c = aten.slice.Tensor(%cos, -1, 0, 4)
    %n = aten.neg.default(%x2)                        ->      %s = aten.slice.Tensor(%sin, -1, 0, 4)
    %r = aten.cat.default([%n, %x1], -1)                      %y = crossgraph.rotary_embedding.default(%x, %c, %s)
    %rs = aten.mul.Tensor(%r, %sin)
    %y = aten.add.Tensor(%xc, %rs)

`x * cos + rotate_half(x) * sin`, with rotate_half as Hugging Face's Llama writes it (slices) or as
models/llama.py does (chunk), once for the queries and once for the keys of every layer. The dialect op takes the
angles once, [..., D/2] (what ONNX Runtime's RotaryEmbedding kernel reads), so a match is fused only where the
graph proves that cos and sin repeat their first half: each is `cat((a, a), -1)` seen through the ops that
keep the two halves equal (cos, sin, casts, multiplying by a number, unsqueezing a leading dim), as both
models compute them. Where that is not proven the match stays as it is.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch.fx import Node

from crossgraph.graphs import Graph
from crossgraph.passes.fake import known_equal
from crossgraph.passes.registry import register
from crossgraph.passes.rewrite import inputs_are_nodes, replace_pattern

aten = torch.ops.aten

_SAME_HALVES = (aten.cos.default, aten.sin.default, aten._to_copy.default, aten.clone.default)
"""Elementwise ops of one tensor: equal halves in, equal halves out."""

_SCALED = (aten.mul.Tensor, aten.div.Tensor)
"""Equal halves stay equal when one operand is a number (Hugging Face's `cos * attention_scaling`)."""


def _chunked(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """models/llama.py's apply_rotary."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def _sliced(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Hugging Face's apply_rotary_pos_emb for one tensor."""
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


@functools.lru_cache(maxsize=None)
def _replacement(half: int) -> Callable[..., torch.Tensor]:
    """The dialect op on the first half of the angles (dim -1: the same function for any rank of cos)."""
    return lambda x, cos, sin: torch.ops.crossgraph.rotary_embedding(x, cos.narrow(-1, 0, half),
                                                                     sin.narrow(-1, 0, half))


def _last_dim(node: Node) -> int:
    return node.meta["val"].dim() - 1


def _repeats_halves(node: Any, width: int) -> bool:
    """True when `node` is provably [..., width] made of two equal halves (see the module docstring)."""
    while isinstance(node, Node) and isinstance(node.meta.get("val"), torch.Tensor):
        if node.target == aten.cat.default:
            parts, dim = node.args[0], node.args[1] if len(node.args) > 1 else 0
            return (len(parts) == 2 and parts[0] is parts[1] and dim % node.meta["val"].dim() == _last_dim(node)
                    and known_equal(node.meta["val"].shape[-1], width))
        if node.target in _SAME_HALVES:
            node = node.args[0]
        elif node.target in _SCALED and len(node.args) == 2 and not isinstance(node.args[1], Node):
            node = node.args[0]
        elif node.target == aten.unsqueeze.default and node.args[1] % node.meta["val"].dim() != _last_dim(node):
            node = node.args[0]
        else:
            return False
    return False


def _angles_repeat(match: Any, graph: torch.fx.Graph, pattern: torch.fx.Graph) -> bool:
    """A match filter: the matched cos and sin are both two equal halves as wide as x."""
    x, cos, sin = match.placeholder_nodes
    width = x.meta["val"].shape[-1]
    return _repeats_halves(cos, width) and _repeats_halves(sin, width)


def _candidates(graph: Graph) -> set[tuple[int, int]]:
    """(rank, head_dim) of every `cat([neg(..), ..], last dim)`: a rotate_half's output."""
    found: set[tuple[int, int]] = set()
    for node in graph.fx.find_nodes(op="call_function", target=aten.cat.default):
        parts, dim = node.args[0], node.args[1] if len(node.args) > 1 else 0
        val = node.meta.get("val")
        if (len(parts) == 2 and isinstance(parts[0], Node) and parts[0].target == aten.neg.default
                and isinstance(val, torch.Tensor) and dim % val.dim() == val.dim() - 1
                and isinstance(val.shape[-1], int) and val.shape[-1] % 2 == 0):
            found.add((val.dim(), val.shape[-1]))
    return found


@register("fuse_rotary", "fuses rotate-half rotary embeddings (x * cos + rotate_half(x) * sin) into "
                         "crossgraph.rotary_embedding")
def fuse_rotary(graph: Graph) -> Graph:
    """Replace every proven rotate-half rotary embedding by the dialect op."""
    for rank, width in sorted(_candidates(graph)):
        example = [torch.ones((2,) * (rank - 1) + (width,)), torch.ones(2, width), torch.ones(2, width)]
        for pattern in (_chunked, _sliced):
            replace_pattern(graph, pattern, _replacement(width // 2), example,
                            match_filters=[inputs_are_nodes, _angles_repeat])
    return graph

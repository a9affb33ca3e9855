"""fuse_bias_gelu: a linear layer's bias add and the gelu after it become a matmul and crossgraph.bias_gelu.

    %mm = aten.addmm.default(%b, %x, %wt)                  %mm = aten.mm.default(%x, %wt)
    %v = aten.view.default(%mm, [2, 8, 128])       ->      %v = aten.view.default(%mm, [2, 8, 128])
    %y = aten.gelu.default(%v, approximate='tanh')         %y = crossgraph.bias_gelu.default(%v, %b, 'tanh')

Both gelu forms fuse (erf: BERT; tanh: GPT-2). The view, there when the linear's input has more than two dims,
holds the capture's shapes (symbolic ones included), so this is a small matcher anchored on `aten.gelu` rather
than a traced pattern; the view is kept and re-pointed at the matmul. It fires only when the addmm and the view
feed nothing but the gelu and the bias is a vector over the output features (bias_gelu adds it along the last
dim). Hugging Face's written-out tanh GELU (`gelu_new`: 0.5 * x * (1 + tanh(...))) right after a biased linear
is first rewritten to `aten.gelu(approximate='tanh')`, the same function, by a traced pattern.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.fx import Node

from crossgraph.graphs import Graph
from crossgraph.passes import fake, program
from crossgraph.passes.registry import register
from crossgraph.passes.rewrite import FLATTENS, replace_pattern

aten = torch.ops.aten


def _gelu_new(x: torch.Tensor) -> torch.Tensor:
    """Hugging Face's NewGELUActivation, op for op."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


def _biased_linear(node: Node) -> Node | None:
    """The addmm computing `node` (itself, or a view of it with the same last dim, so the bias still adds along
    it) with a bias vector and unit alpha/beta; None otherwise."""
    addmm = node.args[0] if node.target in FLATTENS else node
    if not isinstance(addmm, Node) or addmm.target != aten.addmm.default or addmm.kwargs:
        return None
    bias, out = addmm.args[0].meta.get("val"), node.meta.get("val")
    if not isinstance(bias, torch.Tensor) or bias.dim() != 1 or not fake.known_equal(bias.shape[0], out.shape[-1]):
        return None
    return addmm


def _after_biased_linear(match: object, graph: torch.fx.Graph, pattern: torch.fx.Graph) -> bool:
    source = match.placeholder_nodes[0]
    return isinstance(source, Node) and _biased_linear(source) is not None


@register("fuse_bias_gelu", "fuses a linear's bias add and the gelu after it into matmul + crossgraph.bias_gelu")
def fuse_bias_gelu(graph: Graph) -> Graph:
    """Rewrite gelu(addmm(b, x, w) [viewed]) as bias_gelu(mm(x, w) [viewed], b)."""
    replace_pattern(graph, _gelu_new, _gelu_tanh, [torch.ones(2, 8)], match_filters=[_after_biased_linear])
    new_nodes: set[Node] = set()
    for gelu in list(graph.fx.find_nodes(op="call_function", target=aten.gelu.default)):
        source = gelu.args[0]
        addmm = _biased_linear(source) if isinstance(source, Node) and len(source.users) == 1 else None
        if addmm is None or len(addmm.users) != 1:
            continue
        bias, x, weight = addmm.args
        approximate = gelu.kwargs.get("approximate", gelu.args[1] if len(gelu.args) > 1 else "none")
        with graph.fx.inserting_before(addmm):
            mm = graph.fx.call_function(aten.mm.default, (x, weight))
        with graph.fx.inserting_before(gelu):
            fused = graph.fx.call_function(torch.ops.crossgraph.bias_gelu.default,
                                           (source if source is not addmm else mm, bias, approximate))
        if source is not addmm:
            source.replace_input_with(addmm, mm)
        program.carry_provenance(addmm, mm)
        program.carry_provenance(gelu, fused)
        gelu.replace_all_uses_with(fused)
        graph.fx.erase_node(gelu)
        graph.fx.erase_node(addmm)
        new_nodes |= {mm, fused}
    fake.set_vals(graph, new_nodes)
    return graph

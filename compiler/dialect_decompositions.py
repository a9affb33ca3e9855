"""The crossgraph dialect as ATen, for targets whose compiler fuses ATen itself (inductor, tensorrt).

`decompose(graph, target)` rewrites every dialect op into ATen its target's compiler has a fused kernel or fusion
for: attention becomes one `aten.scaled_dot_product_attention` (Inductor lowers it to its flash CPU kernel, GQA and
masks included; Torch-TensorRT has a converter for it, not run here: no GPU), the norms, bias_gelu and
rotary_embedding become their reference math, which both compilers fuse into pointwise/reduction kernels; the
quantized linears are in `quant_decompositions`. Names, inputs and outputs of the Graph stay the same.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.fx.experimental.symbolic_shapes import statically_known_true

from crossgraph.compiler.quant_decompositions import QUANT_DECOMPOSITIONS
from crossgraph.graphs import Graph, UnsupportedOpError
from crossgraph.graphs.capture import decomposition_table
from crossgraph.graphs.dialect import OPS


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, scale: float) -> Tensor:
    """crossgraph.attention as one scaled_dot_product_attention: `is_causal` only where it means the dialect's
    causal mask (Sq == Sk, no other mask; SDPA aligns it to the start), else causal folded into the mask (-inf in
    a float one, so rows it leaves no key give zeros, as the dialect's and sdpa's)."""
    gqa = not statically_known_true(q.shape[1] == k.shape[1])
    sq, sk = q.shape[-2], k.shape[-2]
    if causal and mask is None and statically_known_true(sq == sk):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    if causal:
        keep = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(sk - sq)
        if mask is None:
            mask = keep
        elif mask.dtype == torch.bool:
            mask = mask & keep
        else:
            mask = torch.where(keep, mask, float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


def add_layer_norm(x: Tensor, residual: Tensor, weight: Tensor, bias: Tensor | None,
                   eps: float) -> tuple[Tensor, Tensor]:
    """crossgraph.add_layer_norm's reference math: (layer_norm(x + residual), x + residual)."""
    total = x + residual
    return F.layer_norm(total, total.shape[-1:], weight, bias, eps), total


def bias_gelu(x: Tensor, bias: Tensor, approximate: str) -> Tensor:
    """crossgraph.bias_gelu's reference math: gelu(x + bias)."""
    return F.gelu(x + bias, approximate=approximate)


def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """crossgraph.rms_norm's reference math, normalized in float32 and cast back."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rotary_embedding(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """crossgraph.rotary_embedding's reference math (the model's own), one pointwise kernel for either compiler."""
    cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


DECOMPOSITIONS: dict[torch._ops.OpOverload, Callable[..., Any]] = {
    OPS["attention"]: attention,
    OPS["add_layer_norm"]: add_layer_norm,
    OPS["bias_gelu"]: bias_gelu,
    OPS["rms_norm"]: rms_norm,
    OPS["rotary_embedding"]: rotary_embedding,
    **QUANT_DECOMPOSITIONS,
}
"""Every dialect op's ATen form; the inductor and tensorrt tables."""


def dialect_nodes(graph: Graph) -> list[torch.fx.Node]:
    """The nodes of `graph` that call a crossgraph:: op."""
    return [n for n in graph.fx.nodes if n.op == "call_function" and isinstance(n.target, torch._ops.OpOverload)
            and n.target.namespace == "crossgraph"]


def decompose(graph: Graph, target: str) -> Graph:
    """`graph` with every dialect op replaced by its ATen form (the graph itself when it has none); a crossgraph
    op without one is an UnsupportedOpError for `target`, never left for the compiler to call back into Python."""
    nodes = dialect_nodes(graph)
    if not nodes:
        return graph
    for node in nodes:
        if node.target not in DECOMPOSITIONS:
            prov = graph.provenance(node)
            raise UnsupportedOpError(str(node.target), target, str(prov) if prov else "")
    table = decomposition_table()  # core ATen stays core ATen; scaled_dot_product_attention stays whole
    table.update(DECOMPOSITIONS)
    exported = graph.exported.run_decompositions(table)
    return Graph(exported, name=graph.name, input_names=graph.input_names, output_names=graph.output_names,
                 constant_kwargs=graph.constant_kwargs)

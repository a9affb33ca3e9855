"""split_qkv: a linear whose output is split along its features becomes one linear per chunk (fuse_qkv undone).

    %wt = aten.permute.default(%p_w, [1, 0])                    %wq = aten.permute.default(%b_w_q, [1, 0])
    %y = aten.addmm.default(%p_b, %x, %wt)                      %q = aten.addmm.default(%b_b_q, %x, %wq)
    %y3 = aten.view.default(%y, [2, 8, 96])            ->       %q3 = aten.view.default(%q, [2, 8, 32])
    %s = aten.split_with_sizes.default(%y3, [32, 32, 32], 2)    (%k3 and %v3 the same way, from %b_w_k, %b_b_k,
    %q3, %k3, %v3 = getitem(%s, 0), ...(1), ...(2)              %b_w_v, %b_b_v; users of the getitems read them)

Tensor parallelism shards Q, K and V column-wise so that each device holds whole heads; sharding a fused QKV
weight's output dimension would give device 0 all of Q and part of K. A linear splits when it is an mm or addmm
(unit alpha and beta) whose weight, and bias, are stored weights read directly (Hugging Face's Conv1D [E, 3E]),
through a permute (GPT-2's c_attn [3E, E], as F.linear reads it) or concatenated (what fuse_qkv writes), and
whose output, maybe viewed to [..., N] first, feeds only a `split_with_sizes` (what capture makes of `split` and
`chunk`, equal chunks or not) along the features, read only by getitems. Each chunk becomes its own linear on
the same input, viewed back to the chunk's shape: the same dot products, so the same outputs. Chunks nothing
reads are not computed.

A chunk's weight is its slice of the stored weight, cut along the dimension that becomes output features, in the
same layout and read through the same permutes; a chunk that is exactly one part of a concatenation reads that
part's weight again, so fuse_qkv followed by split_qkv gives the original projections back. New slices are
persistent buffers, not lifted constants: they are weights, kept in the state dict like the parameters they
replace, and out of reach of Inductor's freezing limit on lifted constants (see `program.add_constant`). Each is
named after its stored weight plus `_q`, `_k`, `_v` for three chunks, `_0`, `_1`, ... otherwise
("h.0.attn.c_attn.weight_q"), so a rule matching the original name matches its chunks. Not ".q": unlifting
(`ExportedProgram.module()`) reads dots as submodule paths, and a weight still in the program cannot also be a
module. Weights nothing reads any more leave the program.
"""

from __future__ import annotations

from operator import getitem
from typing import NamedTuple

import torch
from torch.fx import Node

from crossgraph.graphs import Graph
from crossgraph.passes import fake, program
from crossgraph.passes.quantize import LINEARS
from crossgraph.passes.registry import register
from crossgraph.passes.rewrite import FLATTENS

aten = torch.ops.aten
_QKV = ("q", "k", "v")


class _Part(NamedTuple):
    """A stored weight whose dimension `dim` (`width` long) runs along a linear's output features, and the
    permutes that lead from it to the linear, innermost first."""

    source: Node
    dim: int
    permutes: tuple[Node, ...]
    width: int


class _Split(NamedTuple):
    """A linear to split: its weight's and bias's parts, the view and split after it, and the chunk widths."""

    linear: Node
    weight: list[_Part]
    bias: list[_Part] | None
    view: Node | None
    split: Node
    widths: list[int]


def _parts(node: Node, dim: int, stored: dict[Node, torch.Tensor]) -> list[_Part] | None:
    """The stored weights that a matmul operand is made of along its dimension `dim`, in order: one weight,
    maybe through permutes, or a concatenation of such along `dim`; None for anything else."""
    if node.target == aten.cat.default:
        if (node.args[1:] or (0,))[0] % node.meta["val"].dim() != dim:
            return None
        found = [_parts(part, dim, stored) for part in node.args[0]]
        return None if any(f is None for f in found) else [p for f in found for p in f]
    permutes = []
    while node not in stored:
        if node.target != aten.permute.default:
            return None
        permutes.append(node)
        dim = node.args[1][dim] % len(node.args[1])
        node = node.args[0]
    return [_Part(node, dim, tuple(reversed(permutes)), stored[node].shape[dim])]


def _locate(parts: list[_Part], start: int, width: int) -> tuple[_Part, int] | None:
    """The part holding features [start, start + width) and where they start in it; None if they span parts."""
    for part in parts:
        if start < part.width:
            return (part, start) if start + width <= part.width else None
        start -= part.width
    return None


def _find(linear: Node, stored: dict[Node, torch.Tensor]) -> _Split | None:
    """The split of `linear`, when it has the pattern of the module docstring and every chunk lies in one part."""
    if linear.kwargs or len(linear.users) != 1:
        return None
    features = linear.meta["val"].shape[1]
    (user,) = linear.users
    view = None
    if user.target in FLATTENS:
        if len(user.users) != 1 or not fake.known_equal(user.meta["val"].shape[-1], features):
            return None
        view, (user,) = user, user.users
    if user.target != aten.split_with_sizes.default or not all(u.target is getitem for u in user.users):
        return None
    rank = user.args[0].meta["val"].dim()
    if (user.args[2:] or (0,))[0] % rank != rank - 1:
        return None
    weight = _parts(linear.args[-1], 1, stored)
    bias = None
    if linear.target == aten.addmm.default and linear.args[0].meta["val"].dim() == 1:
        bias = _parts(linear.args[0], 0, stored)
    operands = [weight] if linear.target == aten.mm.default else [weight, bias]
    widths = [int(chunk.shape[-1]) for chunk in user.meta["val"]]
    starts = [sum(widths[:i]) for i in range(len(widths))]
    if any(parts is None or _locate(parts, start, width) is None for parts in operands
           for start, width in zip(starts, widths)):
        return None
    return _Split(linear, weight, bias, view, user, widths)


def _operand(graph: Graph, parts: list[_Part], start: int, width: int, suffix: str,
             stored: dict[Node, torch.Tensor], names: dict[Node, str]) -> Node:
    """A chunk's weight or bias operand: the part's weight, or a new buffer holding the chunk's slice of it,
    through the part's permutes (re-created at the insertion point)."""
    part, offset = _locate(parts, start, width)
    node = part.source
    if (offset, width) != (0, part.width):
        tensor = stored[node].narrow(part.dim, offset, width).clone(memory_format=torch.contiguous_format)
        node = program.add_constant(graph, f"{names[part.source]}_{suffix}", tensor, buffer=True)
        program.carry_provenance(part.source, node)
    for permute in part.permutes:
        node = graph.fx.call_function(permute.target, (node, *permute.args[1:]))
        program.carry_provenance(permute, node)
    return node


def _rewrite(graph: Graph, found: _Split, stored: dict[Node, torch.Tensor], names: dict[Node, str]) -> set[Node]:
    """Replace the linear and its split by one linear per chunk that something reads; returns the new nodes."""
    linear, view, split, widths = found.linear, found.view, found.split, found.widths
    suffixes = _QKV if len(widths) == 3 else [str(i) for i in range(len(widths))]
    read = {user.args[1] for user in split.users}
    chunks: dict[int, Node] = {}
    before = linear.prev
    with graph.fx.inserting_before(linear):
        for index, (width, suffix) in enumerate(zip(widths, suffixes)):
            if index not in read:
                continue
            start = sum(widths[:index])
            args = (linear.args[-2], _operand(graph, found.weight, start, width, suffix, stored, names))
            if found.bias is not None:
                args = (_operand(graph, found.bias, start, width, suffix, stored, names), *args)
            chunk = graph.fx.call_function(linear.target, args)
            program.carry_provenance(linear, chunk)
            if view is not None:
                chunk = graph.fx.call_function(view.target, (chunk, [*view.args[1][:-1], width]))
                program.carry_provenance(view, chunk)
            chunks[index] = chunk
    new_nodes, node = set(), linear.prev
    while node is not before:  # everything inserted (placeholders go elsewhere) sits between them
        new_nodes.add(node)
        node = node.prev
    for user in list(split.users):
        user.replace_all_uses_with(chunks[user.args[1]])
        graph.fx.erase_node(user)
    program.erase_unused(graph, split)  # and the view, the linear, its permutes and concatenations
    return new_nodes


@register("split_qkv", "splits a linear whose output is split along its features (GPT-2's c_attn) into one "
          "linear per chunk, for tensor parallelism")
def split_qkv(graph: Graph) -> Graph:
    """Split every linear of the module docstring's pattern; drop the fused weights nothing reads any more."""
    stored = program.constant_inputs(graph)
    names = program.state_names(graph)
    found = [f for node in list(graph.fx.nodes) if node.op == "call_function" and node.target in LINEARS
             and (f := _find(node, stored)) is not None]
    new_nodes: set[Node] = set()
    for split in found:
        new_nodes |= _rewrite(graph, split, stored, names)
    fake.set_vals(graph, new_nodes)
    sources = {p.source for f in found for p in (*f.weight, *(f.bias or ()))}
    program.remove_inputs(graph, [n for n in sources if not n.users])
    return graph

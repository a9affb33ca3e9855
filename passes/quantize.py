"""Quantization passes: every linear layer whose weight is a constant becomes a quantized op of the dialect.

    %w = aten.permute.default(%p_w, [1, 0])                 %c_qweight = input  (uint8 [N, blocks, bytes])
    %y = aten.addmm.default(%p_b, %x, %w)          ->       %y = crossgraph.weight_only_linear.default(
                                                                %x, %c_qweight, %c_scales, None, %p_b, K, 4, 32)

A linear is an `aten.mm` or `aten.addmm` (what F.linear and `x @ w` are captured as) whose weight operand is a
parameter, buffer or constant, possibly through transposes and views (a tied LM head reads the embedding table
transposed); the stored weight is quantized once, here, into persistent buffers (see `program.add_constant`).
The new node carries a QuantSpec annotation; weights nothing reads any more leave the program. The dialect ops
take x of any rank, so a linear captured between a flatten to [M, K] and an unflatten back to [..., N] reads the
unflattened x and replaces the unflatten: ONNX Runtime copied many of those Reshapes (98 took 6% of int8 GPT-2's
time). Schemes (graphs/quant.py has the storage and the math):

- `quantize_int8_weight_only`, `quantize_int4_weight_only`: weights in 8 or 4 bits (MatMulNBits layout), per
  output channel or in groups along K, symmetric or not; activations stay float. Embedding tables too
  (`aten.embedding` of a stored table becomes `crossgraph.weight_only_embedding`), in the same layout, so a tied
  embedding and LM head (GPT-2's wte) share one quantized table.
- `quantize_dynamic_int8`: int8 weights per output channel, activations quantized to uint8 on every call.
- static int8 (`quantize_static`, not a registered pass: it needs a Calibration from `calibrate`): int8 weights,
  activations quantized with the scale and zero point their calibrated range gives.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.fx import Node

from crossgraph.graphs import Graph, InputError
from crossgraph.graphs import annotations, quant
from crossgraph.graphs.quant import QUANT_OPS, QuantSpec
from crossgraph.passes import fake, program
from crossgraph.passes.registry import register
from crossgraph.passes.rewrite import FLATTENS, drop_proven_asserts

aten = torch.ops.aten
LINEARS = (aten.mm.default, aten.addmm.default)
_WEIGHT_VIEWS = frozenset({aten.permute.default, aten.t.default, aten.transpose.int, aten.view.default,
                           aten.reshape.default, aten.clone.default, aten.alias.default, aten._unsafe_view.default})
"""Ops between a stored weight and the matmul that only re-lay it out (evaluated once, on the real tensor)."""


def _weight_value(node: Node, constants: dict[Node, torch.Tensor]) -> torch.Tensor | None:
    """The value of a matmul's weight operand when it is a stored weight, maybe re-laid out; else None."""
    if node in constants:
        return constants[node]
    if node.target not in _WEIGHT_VIEWS or not isinstance(node.args[0], Node) or any(
            isinstance(a, Node) for a in node.args[1:]):
        return None
    source = _weight_value(node.args[0], constants)
    return None if source is None else node.target(source, *node.args[1:], **node.kwargs)


def linears(graph: Graph) -> list[tuple[Node, torch.Tensor]]:
    """Each float mm/addmm with a stored 2-D weight [K, N], and that weight's value, in graph order."""
    constants = program.constant_inputs(graph)
    found = []
    for node in graph.fx.nodes:
        if node.op != "call_function" or node.target not in LINEARS or node.kwargs:
            continue
        weight = _weight_value(node.args[-1], constants) if isinstance(node.args[-1], Node) else None
        if weight is not None and weight.dim() == 2 and weight.is_floating_point():
            found.append((node, weight))
    return found


Quantized = tuple[torch._ops.OpOverload, tuple, tuple, QuantSpec]
"""A linear's replacement: the dialect op, its arguments between x and the bias (stored tensors), those after
the bias (sizes, calibrated scalars), and the annotation."""
Replacement = Callable[[Graph, Node, torch.Tensor], Quantized]
"""(graph, linear node, its weight [K, N]) -> the replacement."""


def _rewrite(graph: Graph, replacement: Replacement, only: set[str] | None = None) -> Graph:
    """Replace every linear of `graph` (those named in `only`, when given) by the quantized op `replacement`
    describes; drop the weights left unread."""
    constants = program.constant_inputs(graph)
    new_nodes: set[Node] = set()
    for node, weight in linears(graph):
        if only is not None and node.name not in only:
            continue
        bias, x = (node.args[0], node.args[1]) if node.target == aten.addmm.default else (None, node.args[0])
        op, stored, trailing, spec = replacement(graph, node, weight.detach())
        source = _unflattened_x(x)
        with graph.fx.inserting_before(node):
            quantized = graph.fx.call_function(op, (x if source is None else source, *stored, bias, *trailing))
        program.carry_provenance(node, quantized)
        annotations.put(quantized, spec)
        new_nodes.add(quantized)
        if source is not None:
            new_nodes |= _read_unflattened(graph, node, quantized)
        node.replace_all_uses_with(quantized)
        program.erase_unused(graph, node)
    return _settle(graph, new_nodes, constants)


def _unflattened_x(x: Node) -> Node | None:
    """The [..., K] value (rank >= 3) that `x` flattens to [M, K], if x is such a flatten; else None."""
    if not (isinstance(x, Node) and x.target in FLATTENS and isinstance(x.args[0], Node)):
        return None
    source, flat = x.args[0].meta.get("val"), x.meta.get("val")
    if not (isinstance(source, torch.Tensor) and isinstance(flat, torch.Tensor) and source.dim() >= 3
            and flat.dim() == 2 and fake.known_equal(source.shape[-1], flat.shape[-1])):
        return None
    return x.args[0]


def _read_unflattened(graph: Graph, linear: Node, quantized: Node) -> set[Node]:
    """Point what read `linear`'s [M, N] result at `quantized`'s [..., N] one: a view back to [..., N] is
    dropped, another view reads it as it is, anything else through one new view to [M, N] (returned)."""
    lead = tuple(quantized.args[0].meta["val"].shape[:-1])
    n = linear.meta["val"].shape[-1]
    flat: Node | None = None
    for user in list(linear.users):
        val = user.meta.get("val")
        if user.target in FLATTENS and user.args[0] is linear and isinstance(val, torch.Tensor):
            if fake.known_equal(tuple(val.shape), (*lead, n)):
                user.replace_all_uses_with(quantized)
                graph.fx.erase_node(user)
            else:
                user.args = (quantized, *user.args[1:])
            continue
        if flat is None:
            with graph.fx.inserting_after(quantized):
                flat = graph.fx.call_function(aten.view.default, (quantized, [-1, n]))
        user.replace_input_with(linear, flat)
    return set() if flat is None else {flat}


def _settle(graph: Graph, new_nodes: set[Node], constants: dict[Node, torch.Tensor]) -> Graph:
    """After a rewrite: fake values for the new nodes; the metadata asserts their values prove dropped (the
    verifier re-derives what a changed value reaches, and an assert has no value to re-derive); the weights
    nothing reads any more removed; the output specs pointed at a new node that now is an output."""
    fake.set_vals(graph, new_nodes)
    program.sync_outputs(graph)
    drop_proven_asserts(graph, list(graph.fx.nodes))
    program.remove_inputs(graph, [n for n in constants if not n.users])
    return graph


def validate_weight_only(bits: int, group_size: int) -> None:
    """Raise InputError unless `bits` is 4 or 8 and `group_size` 0 (per channel) or a power of two >= 16 (what
    MatMulNBits takes)."""
    if bits not in (4, 8):
        raise InputError(f"weight-only quantization takes 4 or 8 bits, not {bits}")
    if group_size and (group_size < 16 or group_size & (group_size - 1)):
        raise InputError(f"group_size must be 0 (per channel) or a power of two >= 16, not {group_size}")


def quantize_weight_only(graph: Graph, bits: int, group_size: int = 0, symmetric: bool = True) -> Graph:
    """Every linear's weight, and every embedding table, in `bits` (4 or 8), per output channel (group_size 0)
    or in groups of `group_size` along K, symmetric or with zero points (see `validate_weight_only`). A table
    read both ways (a tied embedding and LM head) is stored once."""
    validate_weight_only(bits, group_size)
    spec = QuantSpec(f"int{bits}_weight_only", bits, group_size, symmetric)
    stored: dict[tuple, tuple[torch.Tensor, tuple[Node | None, ...]]] = {}

    def store(graph: Graph, name: str, table: torch.Tensor) -> tuple[Node | None, ...]:
        """`table` [N, K] quantized into buffers, once per distinct tensor (a view of the same storage shares;
        the table is kept referenced, so no later tensor can reuse its address)."""
        key = (table.data_ptr(), tuple(table.shape), table.stride(), table.dtype)
        if key not in stored:
            tensors = zip(("qweight", "scales", "zero_points"),
                          quant.quantize_weight(table, bits, group_size, symmetric))
            stored[key] = table, tuple(None if t is None else
                                       program.add_constant(graph, f"{name}_{what}", t, buffer=True)
                                       for what, t in tensors)
        return stored[key][1]

    def replace(graph: Graph, node: Node, weight: torch.Tensor) -> Quantized:
        k = weight.shape[0]
        return (QUANT_OPS["weight_only_linear"], store(graph, node.name, weight.T),
                (k, bits, quant.storage_block(k, group_size)), spec)

    _rewrite(graph, replace)
    return _rewrite_embeddings(graph, store, (bits, group_size), spec)


def _rewrite_embeddings(graph: Graph, store: Callable[[Graph, str, torch.Tensor], tuple[Node | None, ...]],
                        settings: tuple[int, int], spec: QuantSpec) -> Graph:
    """Replace every `aten.embedding` of a stored float32 table by weight_only_embedding over `store`'s buffers;
    drop the tables left unread."""
    constants = program.constant_inputs(graph)
    bits, group_size = settings
    new_nodes: set[Node] = set()
    for node in list(graph.fx.find_nodes(op="call_function", target=aten.embedding.default)):
        table, indices = node.args[:2]
        value = constants.get(table)
        if value is None or value.dim() != 2 or value.dtype != torch.float32:
            continue
        k = value.shape[1]
        with graph.fx.inserting_before(node):
            quantized = graph.fx.call_function(QUANT_OPS["weight_only_embedding"], (
                *store(graph, node.name, value.detach()), indices, k, bits, quant.storage_block(k, group_size)))
        program.carry_provenance(node, quantized)
        annotations.put(quantized, spec)
        node.replace_all_uses_with(quantized)
        graph.fx.erase_node(node)
        new_nodes.add(quantized)
    return _settle(graph, new_nodes, constants)


def _int8_weight(graph: Graph, node: Node, weight: torch.Tensor) -> tuple[Node, Node]:
    """The int8 per-channel weight and its scales, stored as buffers."""
    qweight, scale = quant.quantize_weight_int8(weight)
    return (program.add_constant(graph, f"{node.name}_qweight", qweight, buffer=True),
            program.add_constant(graph, f"{node.name}_w_scale", scale, buffer=True))


def quantize_dynamic(graph: Graph) -> Graph:
    """Every linear as int8 weights (per output channel) times activations quantized to uint8 per call."""
    def replace(graph: Graph, node: Node, weight: torch.Tensor) -> Quantized:
        return QUANT_OPS["dynamic_quant_linear"], _int8_weight(graph, node, weight), (), QuantSpec("dynamic_int8")

    return _rewrite(graph, replace)


def quantize_static(graph: Graph, calibration: dict[str, tuple[float, int]]) -> Graph:
    """Every calibrated linear (node name -> its input's uint8 scale and zero point, from `calibrate`) as int8
    weights times activations quantized with that fixed scale and zero point; other linears stay float."""
    calibrated = {node.name for node, _ in linears(graph)} & set(calibration)
    if not calibrated:
        raise InputError("the calibration names none of this graph's linear layers: calibrate the same graph "
                         "that is quantized")

    def replace(graph: Graph, node: Node, weight: torch.Tensor) -> Quantized:
        scale, zero = calibration[node.name]
        return (QUANT_OPS["static_quant_linear"], _int8_weight(graph, node, weight), (scale, zero),
                QuantSpec("static_int8", activation_scale=scale, activation_zero_point=zero))

    return _rewrite(graph, replace, calibrated)


@register("quantize_int8_weight_only", "int8 linear weights and embedding tables per output channel, float "
          "activations")
def quantize_int8_weight_only(graph: Graph) -> Graph:
    """quantize_weight_only(bits=8, per channel, symmetric)."""
    return quantize_weight_only(graph, 8)


@register("quantize_int4_weight_only", "int4 linear weights and embedding tables in groups of 32 with zero points, "
          "float activations")
def quantize_int4_weight_only(graph: Graph) -> Graph:
    """quantize_weight_only(bits=4, group_size=32, asymmetric)."""
    return quantize_weight_only(graph, 4, 32, symmetric=False)


@register("quantize_dynamic_int8", "int8 weights per channel, activations quantized to uint8 on every call")
def quantize_dynamic_int8(graph: Graph) -> Graph:
    """quantize_dynamic."""
    return quantize_dynamic(graph)

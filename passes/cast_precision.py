"""cast_float16, cast_bfloat16: weights stored and computation done in half precision; norms, softmax and
reductions stay float32, and the graph's inputs and outputs keep their dtypes.

    %p_w = input  # float32[N, K]                     %p_w = input  # float16[N, K]
    %x = input  # float32[B, K]                       %x = input  # float32[B, K]
                                                      %x_h = aten._to_copy.default(%x, dtype=torch.float16)
    %t = aten.permute.default(%p_w, [1, 0])           %t = aten.permute.default(%p_w, [1, 0])  [quant: float16]
    %h = aten.mm.default(%x, %t)              ->      %h = aten.mm.default(%x_h, %t)           [quant: float16]
                                                      %h_f = aten._to_copy.default(%h, dtype=torch.float32)
    %n = aten._softmax.default(%h, -1, False)         %n = aten._softmax.default(%h_f, -1, False)
    return (%n,)                                      return (%n,)

Every float32 value gets one of four roles, in graph order:

- low: activations. A float32 user input is one (cast to the half dtype where it is read); so is the result of
  an op that reads a low value, and of a non-pointwise op (a matmul, a view) that reads a kept result.
- kept: the results of the ops in `keep_fp32` (DEFAULT_KEEP: the norms, softmax and log-softmax, and the mean,
  sum and variance reductions that decomposed norms are made of), computed in float32 from float32 inputs, and
  of pointwise ops on kept results (an RMSNorm's `mean + eps` and its rsqrt). A pointwise low op read only by
  kept ops (or the output) is kept too, so an RMSNorm squares x in float32 (x^2 overflows float16 above 256)
  and GPT-2's attention masks its scores in float32 (its finfo(float32).min fill stays finite).
- float32: values computed from no activation (positions, rotary tables, a causal mask's fill), including
  explicit casts to float32: they stay float32 until an activation reads them, so rotary angles, positions
  times frequencies, do not lose digits to float16.
- weight: parameters, buffers and constants (not mutated ones) and what is computed from them alone take the
  dtype their readers compute in: the half dtype when any reader computes low, else float32 (norm scales and
  biases, Hugging Face Llama's rotary frequencies), as ONNX's float16 converter keeps the initializers of its
  blocked ops. A weight read both ways is stored in the half dtype and cast up for its float32 readers; one
  nothing reads (a tied weight's other name) in the half dtype, so tied weights stay one tensor.

Each op then reads its float32 inputs in the dtype it computes in, through one `_to_copy` per value and dtype,
made before its first reader. Outputs that changed dtype are cast back; integer and boolean tensors are never
touched. `_assert_tensor_metadata` checks of a value now held in the half dtype check that dtype. Each node
computing a half-precision value carries QuantSpec(scheme="float16" or "bfloat16"); casts do not. A second
run changes nothing.

Attention stays low (aten.scaled_dot_product_attention, crossgraph.attention): its kernels keep the softmax in
float32 inside, as autocast has it. Run the fusions first (their patterns are float32 ones) and this pass after
them; `cast_precision(graph, dtype, keep_fp32)` takes another keep list (ops or op packets). ONNX Runtime's CPU
provider runs a float16 graph (its arithmetic in float32, through casts it inserts) but not a bfloat16 one
(docs/known-divergences.md).
"""

from __future__ import annotations

import operator
from typing import Iterable

import torch
from torch.fx import Node

from crossgraph.graphs import Graph, InputError, Provenance, annotations
from crossgraph.graphs.quant import QuantSpec
from crossgraph.passes import fake, program
from crossgraph.passes.registry import register

aten = torch.ops.aten
Op = torch._ops.OpOverload | torch._ops.OpOverloadPacket

DEFAULT_KEEP: frozenset[Op] = frozenset({
    aten.native_layer_norm.default, aten.native_group_norm.default,
    aten._native_batch_norm_legit_no_training.default,
    torch.ops.crossgraph.rms_norm.default, torch.ops.crossgraph.add_layer_norm.default,
    aten._softmax.default, aten._log_softmax.default,
    aten.mean.dim, aten.sum.dim_IntList, aten.var.correction, aten.var_mean.correction,
})
"""Ops computed in float32: norms, softmaxes, and the reductions of decomposed norms (a float16 sum overflows)."""

LOW_DTYPES = (torch.float16, torch.bfloat16)
_CHECKS = (aten._assert_tensor_metadata.default,)
_CASTS = (aten._to_copy.default,)
LOW, KEPT, FLOAT32, WEIGHT = "low", "kept", "float32", "weight"


def _is_float32(node: Node) -> bool:
    """Whether `node` holds a float32 tensor: the values this pass decides a dtype for."""
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.dtype == torch.float32


def _readers(node: Node) -> list[Node]:
    """The users of `node` that compute with it (metadata checks only look)."""
    return [u for u in node.users if u.target not in _CHECKS]


def _pointwise(node: Node) -> bool:
    """Whether `node` is an elementwise ATen op (torch's pointwise tag): one that a float32 island can grow by."""
    return isinstance(node.target, torch._ops.OpOverload) and torch.Tag.pointwise in node.target.tags


def _kept(node: Node, keep: frozenset[Op]) -> bool:
    """Whether `node`'s op, or its overload packet, is in the keep list."""
    return node.target in keep or getattr(node.target, "overloadpacket", None) in keep


def _role(node: Node, roles: dict[Node, str], keep: frozenset[Op]) -> str:
    """The role of a call_function node's result, from its op and the roles of its float32 inputs."""
    if _kept(node, keep):
        return KEPT
    if node.target is operator.getitem:
        return roles[node.args[0]]
    if node.kwargs.get("dtype") == torch.float32 or not isinstance(node.target, torch._ops.OpOverload):
        return FLOAT32  # an explicit float32, or a higher-order op (its subgraphs were captured for float32)
    inputs = {roles[i] for i in node.all_input_nodes if _is_float32(i)}
    if LOW in inputs:
        return LOW
    if KEPT in inputs:
        return KEPT if _pointwise(node) else LOW
    if FLOAT32 in inputs or not inputs:
        return FLOAT32
    return WEIGHT if all(roles.get(i) == WEIGHT for i in node.all_input_nodes) else LOW  # an embedding reads ids


def _roles(graph: Graph, keep: frozenset[Op]) -> dict[Node, str]:
    """Every placeholder's and call_function node's role (module docstring), weights resolved to low or float32."""
    weights, user_inputs = program.constant_inputs(graph), set(graph.input_nodes())
    roles: dict[Node, str] = {}
    for node in graph.fx.nodes:
        if node.op == "placeholder":
            roles[node] = WEIGHT if node in weights else LOW if node in user_inputs else FLOAT32
        elif node.op == "call_function" and node.target not in _CHECKS:
            roles[node] = _role(node, roles, keep)
    for node in reversed(graph.fx.nodes):  # users first
        readers = _readers(node)
        if roles.get(node) == LOW and _pointwise(node) and readers and all(
                u.op == "output" or _kept(u, keep) for u in readers):
            roles[node] = KEPT
        elif roles.get(node) == WEIGHT:
            roles[node] = LOW if not readers or any(roles.get(u) == LOW for u in readers) else FLOAT32
    return roles


def _store(graph: Graph, nodes: list[Node], dtype: torch.dtype) -> None:
    """Store the weights of placeholders `nodes` in `dtype`, converting a tensor shared by several once."""
    ep = graph.exported
    targets = {s.arg.name: s.target for s in ep.graph_signature.input_specs}
    converted: dict[int, torch.Tensor] = {}
    for node in nodes:
        state = ep.state_dict if targets[node.name] in ep.state_dict else ep.constants
        tensor = state[targets[node.name]]
        if id(tensor) not in converted:
            low = tensor.detach().to(dtype)
            converted[id(tensor)] = (torch.nn.Parameter(low, tensor.requires_grad)
                                     if isinstance(tensor, torch.nn.Parameter) else low)
        state[targets[node.name]] = converted[id(tensor)]
    with fake.fake_mode(graph):
        for node in nodes:
            node.meta["val"] = node.meta["val"].to(dtype)


def _carry_provenance(reader: Node, cast: Node) -> None:
    """Give a cast its reader's provenance (torch's keys and the Provenance annotation), none of its other
    annotations (a QuantSpec describes the reader, not the cast)."""
    program.carry_provenance(reader, cast)
    cast.meta.pop(annotations.META_KEY, None)
    cast.meta.get("custom", {}).pop(annotations.META_KEY, None)  # their saved form
    provenance = annotations.get(reader, Provenance)
    if provenance is not None:
        annotations.put(cast, provenance)


def _cast(graph: Graph, value: Node, dtype: torch.dtype, reader: Node,
          casts: dict[tuple[Node, torch.dtype], Node]) -> Node:
    """`value` in `dtype`: one `_to_copy` per value and dtype, made before its first reader (whose provenance it
    takes: the cast exists for it)."""
    if (value, dtype) not in casts:
        with graph.fx.inserting_before(reader):
            cast = graph.fx.call_function(aten._to_copy.default, (value,), {"dtype": dtype})
        _carry_provenance(reader, cast)
        cast.meta["val"] = fake.evaluate(cast)
        casts[value, dtype] = cast
    return casts[value, dtype]


def _retarget_check(node: Node) -> None:
    """A metadata check captured as float32 on a value now held in another dtype checks that dtype; run on the
    fake value, it stores its result (None), as the verifier wants of every node it re-derives."""
    held = node.args[0].meta["val"].dtype
    if node.kwargs.get("dtype") == torch.float32:
        node.update_kwarg("dtype", held)
    elif len(node.args) > 3 and node.args[3] == torch.float32:
        node.update_arg(3, held)
    node.meta["val"] = fake.evaluate(node)


def _inputs_to_cast(node: Node, float32: set[Node], want: torch.dtype) -> list[Node]:
    """The inputs of `node` that were float32 and are not held in `want`. None for tuple indexing, nor for ops
    told their result's dtype (a cast, a reduction with dtype=): a half input converts exactly, so a cast before
    them would only add a node (and make a second cast_precision add more)."""
    if node.target is operator.getitem or "dtype" in node.kwargs:
        return []
    return [v for v in node.all_input_nodes if v in float32 and v.meta["val"].dtype != want]


def _rewrite(graph: Graph, roles: dict[Node, str], dtype: torch.dtype) -> None:
    """Cast each op's float32 inputs to the dtype it computes in, and the outputs back; re-derive meta["val"]
    downstream of every change."""
    float32 = {n for n in graph.fx.nodes if _is_float32(n)}
    casts: dict[tuple[Node, torch.dtype], Node] = {}
    stored = [n for n in program.constant_inputs(graph) if n in float32 and roles[n] == LOW]
    _store(graph, stored, dtype)
    changed = set(stored)
    with fake.fake_mode(graph):
        for node in list(graph.fx.nodes):
            if node.op != "call_function":
                continue
            if node.target in _CHECKS:
                _retarget_check(node)
                continue
            want = dtype if roles[node] == LOW else torch.float32
            for value in _inputs_to_cast(node, float32, want):
                cast = _cast(graph, value, want, node, casts)
                node.replace_input_with(value, cast)
                changed.add(cast)
            if any(i in changed for i in node.all_input_nodes):
                derived = fake.evaluate(node)
                if not fake.same_meta(derived, node.meta["val"], layout=True):
                    node.meta["val"] = derived
                    changed.add(node)
        _cast_outputs(graph, float32, casts)


def _cast_outputs(graph: Graph, float32: set[Node], casts: dict[tuple[Node, torch.dtype], Node]) -> None:
    """Return float32 wherever the graph returned float32 (user outputs and buffer mutations alike)."""
    output = graph.fx.output_node()
    for value in list(output.all_input_nodes):
        if value in float32 and value.meta["val"].dtype != torch.float32:
            output.replace_input_with(value, _cast(graph, value, torch.float32, output, casts))


def _holds(val: object, dtype: torch.dtype) -> bool:
    """Whether a meta["val"] is, or contains, a tensor of `dtype`."""
    if isinstance(val, (tuple, list)):
        return any(_holds(v, dtype) for v in val)
    return isinstance(val, torch.Tensor) and val.dtype == dtype


def cast_precision(graph: Graph, dtype: torch.dtype, keep_fp32: Iterable[Op] = DEFAULT_KEEP) -> Graph:
    """Store float32 weights and compute in `dtype` (float16 or bfloat16), the ops of `keep_fp32` in float32;
    inputs and outputs keep their dtypes. Nodes computing a `dtype` value are annotated QuantSpec(dtype)."""
    if dtype not in LOW_DTYPES:
        raise InputError(f"cast_precision casts to float16 or bfloat16, not {dtype}")
    _rewrite(graph, _roles(graph, frozenset(keep_fp32)), dtype)
    spec = QuantSpec(scheme=str(dtype).removeprefix("torch."))
    for node in graph.fx.nodes:
        if node.op == "call_function" and node.target not in _CASTS and _holds(node.meta.get("val"), dtype):
            annotations.put(node, spec)
    return graph


@register("cast_float16", "stores weights and computes in float16; norms, softmax and reductions stay float32")
def cast_float16(graph: Graph) -> Graph:
    """cast_precision to float16 with the default keep list."""
    return cast_precision(graph, torch.float16)


@register("cast_bfloat16", "stores weights and computes in bfloat16; norms, softmax and reductions stay float32")
def cast_bfloat16(graph: Graph) -> Graph:
    """cast_precision to bfloat16 with the default keep list."""
    return cast_precision(graph, torch.bfloat16)

"""fuse_attention: softmax attention, written out or as scaled_dot_product_attention, becomes crossgraph.attention.

    %s = aten.view.default(aten.bmm.default(%q3, %kt3), [2, 4, 8, 8])       # q @ k^T, 4-d views of q and k^T
    %m = aten.mul.Tensor(%s, 0.353)
    %w = aten.where.self(%not_causal, %lowest, %m)                 ->   %o = crossgraph.attention.default(
    %p = aten._softmax.default(%w, -1, False)                                  %q, %k, %v, None, True, 0.353)
    %o = aten.view.default(aten.bmm.default(%p3, %v3), [2, 4, 8, 8])       # p @ v

The written-out form (models/gpt2.py, llama.py, bert.py) is matched by a small matcher anchored on
`aten._softmax` (the views around each bmm hold the capture's shapes, so no traced pattern fits): q @ k^T with
k^T a transpose of k, an optional scale (`mul`/`div` by a number), then either a `masked_fill` with the dtype's
lowest value (`where(hide, lowest, s)` or `where(keep, s, lowest)`) or an additive float mask, then softmax over
the last dim and `@ v` (Hugging Face's eager attention also matches: its eval-mode dropout is a clone, and the
metadata assert its `.to(q.dtype)` leaves on the softmax is dropped where proven). Llama's `repeat_kv` of k and
v is looked through, so the op gets the Hkv key/value heads (grouped-query).
`aten.scaled_dot_product_attention` nodes (Hugging Face models with sdpa) convert one for one when dropout is 0; sdpa's `is_causal` (top-left aligned) only where Sq == Sk is provable. Where sdpa's output
was laid out [B, S, H, D] in memory (later views of it rely on that), the op's output is copied into that layout.

`causal=True, mask=None` is set only when the mask is provably the causal lower triangle, aligned to the last
key as the op defines it: a mask computed from `arange`s of query and key positions compared with each other
(`tril` of ones decomposes to that, and so does Llama's causal mask: proven for symbolic sizes too), or, with
static shapes, a mask that reads no input (Hugging Face's, built with index ops; a folded constant) and whose
value is the triangle, and with Sq <= Sk provable (so no row hides every key). An sdpa mask is passed through (the
op's semantics are sdpa's: a row that keeps no key gives zeros). A written-out bool mask that fills hidden scores
with the dtype's lowest value becomes the additive mask `hide * lowest`, because the model averages v over a row
that hides every key, where the op with a bool mask would give zeros.
"""

from __future__ import annotations

import math
from operator import getitem
from typing import Any, NamedTuple

import torch
from torch.fx import Node
from torch.fx.experimental.symbolic_shapes import has_free_symbols, statically_known_true

from crossgraph.graphs import Graph
from crossgraph.passes import fake, program
from crossgraph.passes.registry import register
from crossgraph.passes.rewrite import drop_proven_asserts

aten = torch.ops.aten
_RESHAPES = (aten.view.default, aten._unsafe_view.default, aten.reshape.default)


class _Attention(NamedTuple):
    q: Node
    k: Node
    v: Node
    mask: Node | None
    causal: bool
    scale: float
    output: Node                 # the node the op replaces
    source: Node                 # the node whose provenance the op takes
    negate_mask: bool = False    # mask is a "hide" mask: the op takes its negation
    fill: float | None = None    # the finite value the model fills hidden scores with (the op gets it additively)
    heads_inner: bool = False    # the output is laid out [B, S, H, D] in memory (sdpa's), which users rely on


def _val(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, Node) else None


def _shape(node: Node) -> tuple[Any, ...]:
    return tuple(node.meta["val"].shape)


def _eq(a: Any, b: Any) -> bool:
    return fake.known_equal(a, b)


# ---- the operands of q @ k^T and p @ v ------------------------------------------------------------------------
def _strip_copies(node: Node) -> Node:
    """Through clones and expands to the same shape (value-preserving), as matmul's decomposition writes them."""
    while (node.target in (aten.clone.default, aten.expand.default) and isinstance(node.args[0], Node)
           and _eq(_shape(node.args[0]), _shape(node))):
        node = node.args[0]
    return node


def _four_d(node: Any) -> Node | None:
    """The 4-d [B, H, S, D] value a bmm operand [B*H, S, D] was reshaped from."""
    if not isinstance(node, Node) or node.target not in _RESHAPES or _val(node.args[0]) is None:
        return None
    source = node.args[0]
    if _val(source).dim() != 4:
        return None
    b, h, s, d = _shape(source)
    return _strip_copies(source) if _eq(_shape(node), (b * h, s, d)) else None


def _bmm(node: Node) -> tuple[Node, Node] | None:
    """The 4-d operands of a 4-d matmul written as reshape(bmm(reshape(a), reshape(b)))."""
    if (node.target not in _RESHAPES or not isinstance(node.args[0], Node) or node.args[0].target != aten.bmm.default
            or len(_shape(node)) != 4):
        return None
    bmm = node.args[0]
    a, b = _four_d(bmm.args[0]), _four_d(bmm.args[1])
    if a is None or b is None:
        return None
    (n, h, s, _), (_, _, _, t) = _shape(a), _shape(b)
    return (a, b) if _eq(_shape(node), (n, h, s, t)) else None


def _unrepeat(node: Node) -> tuple[Node, int]:
    """Through Llama's repeat_kv ([B, KV, S, D] -> unsqueeze(2) -> expand(rep) -> reshape [B, KV*rep, S, D])."""
    if node.target not in _RESHAPES:
        return node, 1
    expand = node.args[0]
    while expand.target == aten.clone.default:
        expand = expand.args[0]
    if expand.target != aten.expand.default or len(_shape(expand)) != 5:
        return node, 1
    unsqueeze = expand.args[0]
    b, kv, rep, s, d = _shape(expand)
    if (unsqueeze.target != aten.unsqueeze.default or unsqueeze.args[1] != 2
            or not _eq(_shape(unsqueeze), (b, kv, 1, s, d)) or not _eq(_shape(node), (b, kv * rep, s, d))
            or not isinstance(rep, int)):
        return node, 1
    source = unsqueeze.args[0]
    while source.target == aten.slice.Tensor and _eq(_shape(source.args[0]), _shape(source)):
        source = source.args[0]
    return source, rep


def _key_value(k: Node, v: Node) -> tuple[Node, Node]:
    """k and v with a repeat_kv of both looked through (the op repeats them itself)."""
    (k0, k_rep), (v0, v_rep) = _unrepeat(k), _unrepeat(v)
    return (k0, v0) if k_rep == v_rep > 1 else (k, v)


# ---- masks ----------------------------------------------------------------------------------------------------
class _Index(NamedTuple):
    """An integer grid over a tensor's axes (counted from the last, -1): sum(coeff * index) + const."""

    coeffs: tuple[tuple[int, int], ...]
    const: Any


class _Pred(NamedTuple):
    """A bool grid: true where `index` <= 0."""

    index: _Index


def _combine(a: _Index, b: _Index, sign: int) -> _Index:
    coeffs = dict(a.coeffs)
    for axis, c in b.coeffs:
        coeffs[axis] = coeffs.get(axis, 0) + sign * c
    return _Index(tuple(sorted((ax, c) for ax, c in coeffs.items() if c)), a.const + sign * b.const)


def _constant(node: Any, values: tuple[Any, ...]) -> bool:
    """A literal, or a `full`/`scalar_tensor` of one, equal to one of `values` (bools by identity)."""
    if isinstance(node, Node):
        if node.target not in (aten.full.default, aten.scalar_tensor.default):
            return False
        node = node.args[1] if node.target == aten.full.default else node.args[0]
    if isinstance(node, Node):
        return False
    return any(node is v if isinstance(v, bool) else (type(node) is not bool and node == v) for v in values)


_COMPARE = {aten.le.Tensor: (1, 0), aten.le.Scalar: (1, 0), aten.lt.Tensor: (1, 1), aten.lt.Scalar: (1, 1),
            aten.ge.Tensor: (-1, 0), aten.ge.Scalar: (-1, 0), aten.gt.Tensor: (-1, 1), aten.gt.Scalar: (-1, 1)}
"""a OP b as (sign, strict): a <= b is a - b <= 0, a < b is a - b + 1 <= 0 (integers); ge/gt flip the sides."""


def _operand(node: Any, result: Node) -> _Index | _Pred | None:
    """The grid of an input of `result`, checked not to be broadcast along any axis it varies on."""
    if not isinstance(node, Node):
        is_int = isinstance(node, (int, torch.SymInt)) and not isinstance(node, bool)
        return _Index((), node) if is_int else None
    grid = _grid(node)
    index = grid.index if isinstance(grid, _Pred) else grid
    if index is None or any(-a > _val(node).dim() or not _eq(_shape(node)[a], _shape(result)[a])
                            for a, _ in index.coeffs):
        return None
    return grid


def _grid(node: Node) -> _Index | _Pred | None:
    """What a mask built from `arange`s of positions computes at each position, or None (not such a mask)."""
    target, args = node.target, node.args
    if target in (aten.arange.default, aten.arange.start, aten.arange.start_step):
        start = 0 if target == aten.arange.default else args[0]
        step = args[2] if len(args) > 2 else node.kwargs.get("step", 1)
        exact = step == 1 and isinstance(start, (int, torch.SymInt)) and not _val(node).is_floating_point()
        return _Index(((-1, 1),), start) if exact else None
    if target == aten.unsqueeze.default:
        inner, rank = _grid(args[0]), _val(args[0]).dim()
        dim = args[1] if args[1] >= 0 else args[1] + rank + 1
        index = inner.index if isinstance(inner, _Pred) else inner
        if index is None:
            return None
        moved = _Index(tuple((a - 1 if a + rank < dim else a, c) for a, c in index.coeffs), index.const)
        return _Pred(moved) if isinstance(inner, _Pred) else moved
    if target in (aten.clone.default, aten.alias.default, aten.expand.default) or (
            target == aten.slice.Tensor and _eq(_shape(args[0]), _shape(node))):
        return _operand(args[0], node)
    if target in (aten.add.Tensor, aten.sub.Tensor) and not node.kwargs:
        a, b = _operand(args[0], node), _operand(args[1], node)
        if isinstance(a, _Index) and isinstance(b, _Index):
            return _combine(a, b, 1 if target == aten.add.Tensor else -1)
        return None
    if target in _COMPARE:
        (sign, strict), a, b = _COMPARE[target], _operand(args[0], node), _operand(args[1], node)
        if isinstance(a, _Index) and isinstance(b, _Index):
            diff = _combine(a, b, -1) if sign == 1 else _combine(b, a, -1)
            return _Pred(diff._replace(const=diff.const + strict))
        return None
    if target in (aten.bitwise_not.default, aten.logical_not.default):
        inner = _operand(args[0], node)  # not (e <= 0)  <=>  1 - e <= 0
        return _Pred(_combine(_Index((), 1), inner.index, -1)) if isinstance(inner, _Pred) else None
    if target in (aten.logical_and.default, aten.bitwise_and.Tensor) or (
            target == aten.where.self and _constant(args[2], (False,))):
        for pred, other in ((args[0], args[1]), (args[1], args[0])):  # p and True is p
            if _constant(other, (True,)):
                grid = _operand(pred, node)
                return grid if isinstance(grid, _Pred) else None
    return None


class _CausalCheck:
    """Decides whether a bool mask is provably causal; remembers the masks it evaluated (layers share one)."""

    _LIMIT = 256  # nodes: a mask built from positions is a few dozen; anything larger is not evaluated

    def __init__(self, graph: Graph) -> None:
        self.constants = program.constant_inputs(graph)
        self._values: dict[Node, torch.Tensor | None] = {}

    def __call__(self, keep: Node, sq: Any, sk: Any) -> bool:
        """Whether bool `keep` [..., Sq, Sk] is tril(ones(Sq, Sk), Sk - Sq) in its last two dims for every leading
        index (query i sees key j iff j - i - (Sk - Sq) <= 0): by its `arange` grid, or else by its value."""
        val = _val(keep)
        if (not isinstance(val, torch.Tensor) or val.dtype != torch.bool or val.dim() < 2
                or not (_eq(val.shape[-2], sq) and _eq(val.shape[-1], sk))):
            return False
        grid = _grid(keep)
        if isinstance(grid, _Pred):
            return dict(grid.index.coeffs) == {-1: 1, -2: -1} and _eq(grid.index.const + sk - sq, 0)
        if keep not in self._values:
            self._values[keep] = self._evaluate(keep)
        value = self._values[keep]
        if value is None or not (isinstance(sq, int) and isinstance(sk, int)):
            return False
        return bool((value.reshape(-1, sq, sk) == torch.ones(sq, sk, dtype=torch.bool).tril(sk - sq)).all())

    def _evaluate(self, node: Node) -> torch.Tensor | None:
        """The value of a mask that reads no user input, has static shapes and only pure ops, else None: a proof
        for this graph, as folding it to a constant would be."""
        order: list[Node] = []
        visited: set[Node] = set()
        stack = [(node, False)]
        while stack:  # depth first; a node goes into `order` after all its inputs
            current, inputs_done = stack.pop()
            if inputs_done:
                order.append(current)
                continue
            if current in visited or current in self.constants:
                continue
            visited.add(current)
            if (current.op != "call_function" or current.is_impure() or has_free_symbols(current.meta.get("val"))
                    or not isinstance(current.target, torch._ops.OpOverload) and current.target is not getitem
                    or len(visited) > self._LIMIT):
                return None
            stack.append((current, True))
            stack.extend((source, False) for source in current.all_input_nodes if source not in visited)
        values: dict[Node, Any] = dict(self.constants)
        with torch.no_grad():
            for current in order:
                args, kwargs = torch.fx.node.map_arg((current.args, current.kwargs), values.__getitem__)
                values[current] = current.target(*args, **kwargs)
        return values[node]


# ---- the two forms --------------------------------------------------------------------------------------------
def _mask(scores: Node, is_causal: _CausalCheck, sq: Any, sk: Any
          ) -> tuple[Node, Node | None, bool, bool] | None:
    """(scaled scores, mask, causal, whether the mask hides rather than keeps) from what the softmax reads."""
    dtype = _val(scores).dtype
    lowest = (torch.finfo(dtype).min,)
    if scores.target == aten.where.self and (_constant(scores.args[1], lowest) or _constant(scores.args[2], lowest)):
        hides = _constant(scores.args[1], lowest)  # where(hide, lowest, s), or where(keep, s, lowest)
        cond, inner = scores.args[0], scores.args[2 if hides else 1]
        if not isinstance(inner, Node) or not _eq(_shape(inner), _shape(scores)) or _val(cond).dtype != torch.bool:
            return None
        if hides and cond.target in (aten.bitwise_not.default, aten.logical_not.default):
            cond, hides = cond.args[0], False
        if not hides and is_causal(cond, sq, sk) and statically_known_true(sq <= sk):  # no row hides every key
            return inner, None, True, False
        return inner, cond, False, hides
    if scores.target == aten.add.Tensor and not scores.kwargs:
        for inner, mask in (scores.args, scores.args[::-1]):
            if (isinstance(inner, Node) and isinstance(mask, Node) and _eq(_shape(inner), _shape(scores))
                    and _val(mask).dtype == dtype and _scaled(inner) is not None):
                return inner, mask, False, False
        return None
    return scores, None, False, False


def _scaled(node: Node) -> tuple[Node, float] | None:
    """(q @ k^T as a 4-d reshape of a bmm, scale) from `q @ k^T`, `... * scale` or `... / d`."""
    if node.target in (aten.mul.Tensor, aten.div.Tensor) and isinstance(node.args[1], (int, float)):
        factor = float(node.args[1])
        if factor and _bmm(node.args[0]) is not None:
            return node.args[0], (factor if node.target == aten.mul.Tensor else 1.0 / factor)
    return (node, 1.0) if node.target in _RESHAPES and _bmm(node) is not None else None


def _after_softmax(softmax: Node) -> tuple[Node, Node] | None:
    """(the `p @ v` output node, v) for the softmax's one use."""
    user = next(iter(softmax.users)) if len(softmax.users) == 1 else None
    while user is not None and user.target in (aten.expand.default, aten.clone.default) \
            and _eq(_shape(user), _shape(softmax)) and len(user.users) == 1:
        user = next(iter(user.users))
    if user is None or user.target not in _RESHAPES or len(user.users) != 1:
        return None
    bmm = next(iter(user.users))
    if bmm.target != aten.bmm.default or bmm.args[0] is not user or len(bmm.users) != 1:
        return None
    output = next(iter(bmm.users))
    operands = _bmm(output)
    return (output, operands[1]) if operands is not None and _strip_copies(operands[0]) is softmax else None


def _explicit(softmax: Node, is_causal: _CausalCheck) -> _Attention | None:
    """The written-out attention around one softmax, or None."""
    scores, dim, half_to_float = softmax.args
    if half_to_float or dim not in (-1, _val(scores).dim() - 1) or _val(scores).dim() != 4:
        return None
    after = _after_softmax(softmax)
    if after is None:
        return None
    output, v = after
    sq, sk = _shape(scores)[2:]
    masked = _mask(scores, is_causal, sq, sk)
    scaled = _scaled(masked[0]) if masked is not None else None
    if scaled is None:
        return None
    qk, scale = scaled
    q, kt = _bmm(qk)
    if kt.target != aten.permute.default or list(kt.args[1]) not in ([0, 1, 3, 2], [0, 1, -1, -2]):
        return None  # k^T is not written as a transpose of k
    k, v = _key_value(kt.args[0], v)
    _, mask, causal, negate = masked
    fill = torch.finfo(_val(scores).dtype).min if mask is not None and _val(mask).dtype == torch.bool else None
    return _Attention(q, k, v, mask, causal, scale, output, softmax, negate_mask=negate, fill=fill)


def _sdpa(node: Node, is_causal: _CausalCheck) -> _Attention | None:
    """An aten.scaled_dot_product_attention node as the op's arguments, or None."""
    schema = node.target._schema.arguments
    bound = {a.name: a.default_value for a in schema if a.has_default_value()}
    bound.update(zip((a.name for a in schema), node.args))
    bound.update(node.kwargs)
    q, k, v, mask = bound["query"], bound["key"], bound["value"], bound["attn_mask"]
    if bound["dropout_p"] != 0.0 or _val(q).dim() != 4:
        return None
    sq, sk, d = _shape(q)[2], _shape(k)[2], _shape(q)[3]
    scale = bound["scale"]
    if scale is None:
        if not isinstance(d, int):
            return None
        scale = 1.0 / math.sqrt(d)
    causal = bool(bound["is_causal"])
    if causal and (mask is not None or not _eq(sq, sk)):
        return None
    if mask is not None and _val(mask).dtype == torch.bool and is_causal(mask, sq, sk):
        mask, causal = None, True
    b, h, _, dv = _shape(node)
    strides = tuple(_val(node).stride())
    if _eq(strides, (h * sq * dv, sq * dv, dv, 1)):
        heads_inner = False
    elif _eq(strides, (h * sq * dv, dv, h * dv, 1)):
        heads_inner = True
    else:
        return None
    k, v = _key_value(k, v)
    return _Attention(q, k, v, mask, causal, float(scale), node, node, heads_inner=heads_inner)


def _emit(graph: Graph, found: _Attention) -> set[Node]:
    """Insert the op before the output it replaces; returns the new nodes."""
    new: list[Node] = []
    with graph.fx.inserting_before(found.output):
        mask = found.mask
        if found.fill is not None:  # additive `hide * fill`: a row hiding every key averages v, as the model does
            hide = mask if found.negate_mask else graph.fx.call_function(aten.bitwise_not.default, (mask,))
            as_float = graph.fx.call_function(aten._to_copy.default, (hide,), {"dtype": _val(found.q).dtype})
            mask = graph.fx.call_function(aten.mul.Tensor, (as_float, found.fill))
            new += [n for n in (hide, as_float, mask) if n is not found.mask]
        elif found.negate_mask:
            mask = graph.fx.call_function(aten.bitwise_not.default, (mask,))
            new.append(mask)
        op = graph.fx.call_function(torch.ops.crossgraph.attention.default,
                                    (found.q, found.k, found.v, mask, found.causal, found.scale))
        new.append(op)
        if found.heads_inner:  # later views of the transposed output need sdpa's memory layout: copy into it
            bshd = graph.fx.call_function(aten.permute.default, (op, [0, 2, 1, 3]))
            copy = graph.fx.call_function(aten.clone.default, (bshd,), {"memory_format": torch.contiguous_format})
            op = graph.fx.call_function(aten.permute.default, (copy, [0, 2, 1, 3]))
            new += [bshd, copy, op]
    for node in new:
        program.carry_provenance(found.source, node)
    found.output.replace_all_uses_with(op)
    inputs = found.output.all_input_nodes
    graph.fx.erase_node(found.output)  # by hand: sdpa counts as random (dropout), though its dropout is 0 here
    for node in inputs:
        program.erase_unused(graph, node)
    return set(new)


@register("fuse_attention", "fuses softmax attention (written out, or sdpa) into crossgraph.attention")
def fuse_attention(graph: Graph) -> Graph:
    """Replace every attention it can prove by the dialect op."""
    is_causal = _CausalCheck(graph)
    new_nodes: set[Node] = set()
    for node in list(graph.fx.nodes):  # an attention erases only nodes after it or feeding it
        if node.target == aten._softmax.default:
            drop_proven_asserts(graph, [node])  # Hugging Face's `.to(q.dtype)` after softmax leaves one
            found = _explicit(node, is_causal)
        elif node.target == aten.scaled_dot_product_attention.default:
            found = _sdpa(node, is_causal)
        else:
            continue
        if found is not None:
            new_nodes |= _emit(graph, found)
    fake.set_vals(graph, new_nodes)
    return graph

"""Sharding propagation: from the Shardings a plan put on parameters and inputs to every node, with the
collectives each layout change implies and a per-device memory estimate.

Each op's rule says in which layout it needs its inputs and which layout its output has. Where an input's layout
differs from what the op needs, the change is a collective, named as distributed engines name them:

    partial sum -> whole                  all-reduce       (a row-parallel matmul's output)
    partial sum -> split on a dimension   reduce-scatter
    split -> whole                        all-gather       (an FSDP weight before its matmul)
    split on one dimension -> another     all-to-all
    whole -> split                        (free: each device slices its own piece)

Rules keep the layout an activation has and move the weights to it (weights are gathered, activations are not),
and fall back, for an op without a rule, to gathering every input (correct, never silent: the report names the
op). A dimension that does not split evenly is an UnevenShardError naming the tensor, dimension and mesh axis.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import operator
from typing import Any, Callable, Sequence

import torch
from torch.fx import Node

from crossgraph.graphs import Graph, InputError, annotations
from crossgraph.graphs.sharding import Mesh, Sharding
from crossgraph.passes import program

aten = torch.ops.aten
Spec = tuple[tuple[str, ...], ...]


@dataclasses.dataclass(frozen=True)
class Collective:
    """One implied collective: its kind, the node that needs it, the value it moves, over which mesh axes, and
    the global size of that value in bytes."""

    kind: str
    node: str
    tensor: str
    axes: tuple[str, ...]
    bytes: int

    def __str__(self) -> str:
        return f"{self.kind:<14} over {','.join(self.axes):<12} {self.tensor} -> {self.node} ({_size(self.bytes)})"


@dataclasses.dataclass
class ShardingReport:
    """What propagation found: implied collectives in graph order, ops without a rule (their inputs gathered),
    and per device the bytes of weights and the peak bytes of live activations."""

    mesh: Mesh
    collectives: list[Collective]
    gathered_ops: list[str]
    weight_bytes: int
    peak_activation_bytes: int
    unsharded_weight_bytes: int

    def counts(self) -> collections.Counter[str]:
        """How many collectives of each kind."""
        return collections.Counter(c.kind for c in self.collectives)

    def to_json(self) -> dict[str, Any]:
        return {"mesh": str(self.mesh), "devices": self.mesh.size, "collectives": dict(self.counts()),
                "implied": [dataclasses.asdict(c) for c in self.collectives],
                "gathered_ops": sorted(set(self.gathered_ops)),
                "bytes_per_device": {"weights": self.weight_bytes, "unsharded_weights": self.unsharded_weight_bytes,
                                     "peak_activations": self.peak_activation_bytes}}

    def format(self) -> str:
        lines = [f"mesh {self.mesh} ({self.mesh.size} devices)",
                 f"per device: weights {_size(self.weight_bytes)} (of {_size(self.unsharded_weight_bytes)} "
                 f"unsharded), peak activations {_size(self.peak_activation_bytes)}",
                 "collectives: " + (", ".join(f"{n} {k}" for k, n in sorted(self.counts().items())) or "none")]
        lines += [f"  {c}" for c in self.collectives]
        if self.gathered_ops:
            lines.append("no sharding rule (inputs gathered): " + ", ".join(sorted(set(self.gathered_ops))))
        return "\n".join(lines)


def _size(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


# ---- layout helpers -------------------------------------------------------------------------------------------
def _shape(node: Any) -> tuple[int, ...] | None:
    val = node.meta.get("val") if isinstance(node, Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _nbytes(val: Any) -> int:
    if isinstance(val, torch.Tensor):
        return math.prod(int(s) for s in val.shape) * val.element_size()
    return 0


def _without(spec: Spec, axes: set[str]) -> Spec:
    return tuple(tuple(a for a in d if a not in axes) for d in spec)


class _Propagation:
    """One walk over a graph: layouts of nodes so far, the collectives found, ops without rules."""

    def __init__(self, graph: Graph, mesh: Mesh) -> None:
        self.graph, self.mesh = graph, mesh
        self.layouts: dict[Node, Any] = {}
        self.collectives: list[Collective] = []
        self.gathered: list[str] = []
        self.moves: set[tuple[Node, Spec, tuple[str, ...]]] = set()
        self.weights = program.constant_inputs(graph)
        self.labels = _labels(graph)
        self.weight_derived: dict[Node, bool] = {}
        self.batch_axes: set[str] = set()
        self.in_use: dict[Node, Sharding] = {}

    # -- reading and changing layouts --
    def layout(self, node: Node) -> Sharding:
        found = self.in_use.get(node, self.layouts.get(node))
        if isinstance(found, Sharding):
            return found
        return Sharding.replicated(self.mesh, len(_shape(node) or ()))

    def label(self, node: Node) -> str:
        return self.labels.get(node, node.name)

    def is_weight(self, node: Node) -> bool:
        """Whether `node` is computed from stored weights only (parameters, buffers, constants)."""
        if node not in self.weight_derived:
            if node.op == "placeholder":
                self.weight_derived[node] = node in self.weights
            else:
                inputs = node.all_input_nodes
                self.weight_derived[node] = bool(inputs) and all(self.is_weight(i) for i in inputs)
        return self.weight_derived[node]

    def sharding(self, spec: Spec, partial: Sequence[str] = ()) -> Sharding:
        return Sharding(self.mesh, spec, tuple(partial))

    def need(self, node: Any, at: Node, spec: Spec, partial: Sequence[str] = ()) -> None:
        """Record the collectives that move `node`'s value into layout (spec, partial) for its user `at`. Each
        move is counted once per value (engines reuse it); a reduced partial sum stays reduced for later users."""
        if not isinstance(node, Node) or _shape(node) is None:
            return
        have = self.layout(node)
        if (node, spec, tuple(partial)) in self.moves:
            return
        self.moves.add((node, spec, tuple(partial)))
        moved: dict[str, list[str]] = collections.defaultdict(list)
        wanted_axes = {a: d for d, axes in enumerate(spec) for a in axes}
        for axis in have.partial:
            if axis not in partial:
                moved["reduce-scatter" if axis in wanted_axes else "all-reduce"].append(axis)
        for dim, axes in enumerate(have.spec):
            for axis in axes:
                if wanted_axes.get(axis) == dim:
                    continue
                moved["all-to-all" if axis in wanted_axes else "all-gather"].append(axis)
        for kind, axes in moved.items():
            self.collectives.append(Collective(kind, at.name, self.label(node), tuple(axes),
                                               _nbytes(node.meta["val"])))
        if have.partial and not partial:
            self.layouts[node] = have.with_(partial=(), spec=spec if moved.get("reduce-scatter") else have.spec)

    def gather_weights(self, node: Node) -> dict[Node, Sharding]:
        """Weights split over the axes that split the inputs' batch (FSDP storage) are gathered over them
        where they are used; the rule of `node` sees them gathered."""
        gathered = {}
        for arg in node.all_input_nodes:
            layout = self.layouts.get(arg)
            if arg in self.weights and isinstance(layout, Sharding) and set(layout.sharded_axes()) & self.batch_axes:
                spec = _without(layout.spec, self.batch_axes)
                self.need(arg, node, spec)
                gathered[arg] = layout.with_(spec=spec)
        return gathered

    def gather_all(self, node: Node) -> bool:
        """Inputs of `node` made whole (the fallback for ops without a rule); whether any was split."""
        split = False
        for arg in node.all_input_nodes:
            shape = _shape(arg)
            if shape is not None:
                split |= not self.layout(arg).is_replicated
                self.need(arg, node, ((),) * len(shape))
        return split

    # -- the walk --
    def run(self) -> None:
        for node in self.graph.fx.nodes:
            if node.op == "placeholder":
                found = annotations.get(node, Sharding)
                shape = _shape(node)
                if found is not None:
                    if found.mesh != self.mesh:
                        raise InputError(f"{node.name} is annotated on mesh {found.mesh}, the plan on {self.mesh}")
                    found.local_shape(shape or (), self.label(node))
                    self.layouts[node] = found
                    if node not in self.weights:
                        self.batch_axes |= set(found.sharded_axes())
                elif shape is not None:
                    self.layouts[node] = Sharding.replicated(self.mesh, len(shape), "plan")
            elif node.op == "call_function":
                self.in_use = self.gather_weights(node)
                out = self.rule(node)
                self.in_use = {}
                self.layouts[node] = out
                if isinstance(out, Sharding):
                    out.local_shape(_shape(node) or (), self.label(node))
            elif node.op == "output":
                for value in node.args[0]:
                    if isinstance(value, Node) and _shape(value) is not None and self.layout(value).partial:
                        self.need(value, node, self.layout(value).spec)

    def rule(self, node: Node) -> Any:
        """The node's output layout (a Sharding, a tuple of them for tuple-valued ops, or None), recording what
        its inputs need."""
        if node.target is operator.getitem:
            source = self.layouts.get(node.args[0])
            return source[node.args[1]] if isinstance(source, tuple) else None
        val = node.meta.get("val")
        if not isinstance(val, (torch.Tensor, tuple, list)):
            return None
        if not any(_shape(a) is not None for a in node.all_input_nodes):
            return _replicated_like(self.mesh, val)
        rule = _RULES.get(node.target)
        if rule is not None:
            return rule(self, node)
        if isinstance(node.target, torch._ops.OpOverload) and torch.Tag.pointwise in node.target.tags:
            return _pointwise(self, node)
        if self.gather_all(node):
            self.gathered.append(str(node.target))
        return _replicated_like(self.mesh, val)


def _labels(graph: Graph) -> dict[Node, str]:
    """Names for people: "state name (placeholder)" for weights, the input's name for user inputs."""
    labels = {node: f"{name} ({node.name})" for node, name in program.state_names(graph).items()}
    labels.update(zip(graph.input_nodes(), graph.input_names))
    return labels


def _replicated_like(mesh: Mesh, val: Any) -> Any:
    if isinstance(val, (tuple, list)):
        return tuple(_replicated_like(mesh, v) for v in val)
    return Sharding.replicated(mesh, val.dim()) if isinstance(val, torch.Tensor) else None


# ---- rules ----------------------------------------------------------------------------------------------------
_LINEAR_IN = {aten.add.Tensor: "all", aten.sub.Tensor: "all", aten.mul.Tensor: "one", aten.div.Tensor: "first",
              aten.neg.default: "all"}
"""Pointwise ops through which a partial sum stays partial: sums of partials, or one partial factor."""


def _pointwise(p: _Propagation, node: Node) -> Sharding:
    """Broadcasting ops: the output takes the most split input's layout; other inputs are sliced to match
    (free) or, where they split a dimension differently, moved."""
    out_shape = _shape(node)
    tensors = [a for a in node.args if _shape(a) is not None]
    rank = len(out_shape)

    def aligned(arg: Node) -> list[tuple[str, ...] | None]:
        shape, spec = _shape(arg), p.layout(arg).spec
        pad = [None] * (rank - len(shape))
        return pad + [axes if size == out_shape[rank - len(shape) + i] else None
                      for i, (size, axes) in enumerate(zip(shape, spec))]

    leader = max(tensors, key=lambda a: len(p.layout(a).sharded_axes()))
    spec = [axes or () for axes in aligned(leader)]
    used = {a for axes in spec for a in axes}
    for arg in tensors:
        for dim, axes in enumerate(aligned(arg)):
            if axes and not spec[dim] and not used & set(axes):
                spec[dim] = axes
                used |= set(axes)
    partial = _pointwise_partial(p, node, tensors)
    if used & set(partial):
        partial = ()
    for arg in tensors:
        shape = _shape(arg)
        offset = rank - len(shape)
        need = tuple(spec[offset + i] if size == out_shape[offset + i] else () for i, size in enumerate(shape))
        p.need(arg, node, need, partial if p.layout(arg).partial else ())
    return p.sharding(tuple(spec), partial)


def _pointwise_partial(p: _Propagation, node: Node, tensors: list[Node]) -> tuple[str, ...]:
    partials = [p.layout(a).partial for a in tensors]
    if not any(partials):
        return ()
    mode = _LINEAR_IN.get(node.target)
    if mode == "all" and len(set(partials)) == 1 and len(node.all_input_nodes) == len(tensors):
        return partials[0]
    if mode == "one" and sum(bool(x) for x in partials) == 1:
        return next(x for x in partials if x)
    if mode == "first" and partials[0] and not any(partials[1:]) and tensors[0] is node.args[0]:
        return partials[0]
    return ()


def _identity(p: _Propagation, node: Node) -> Sharding:
    source = node.args[0]
    layout = p.layout(source)
    partial = layout.partial if node.target in (aten._to_copy.default, aten.clone.default,
                                                aten.alias.default) else ()
    p.need(source, node, layout.spec, partial)
    return p.sharding(layout.spec, partial)


def _permute(p: _Propagation, node: Node) -> Sharding:
    source = node.args[0]
    layout = p.layout(source)
    rank = len(layout.spec)
    if node.target == aten.permute.default:
        order = [d % rank for d in node.args[1]]
    elif node.target == aten.t.default:
        order = list(range(rank))[::-1]
    else:  # transpose.int
        order = list(range(rank))
        a, b = node.args[1] % rank, node.args[2] % rank
        order[a], order[b] = order[b], order[a]
    return p.sharding(tuple(layout.spec[d] for d in order), layout.partial)


def _groups(src: Sequence[int], dst: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Dimensions of a reshape matched into groups of equal products: [(source dims, result dims), ...]."""
    groups, i, j = [], 0, 0
    while i < len(src) or j < len(dst):
        gi, gj = [i] if i < len(src) else [], [j] if j < len(dst) else []
        a = src[i] if i < len(src) else 1
        b = dst[j] if j < len(dst) else 1
        i, j = i + bool(gi), j + bool(gj)
        while a != b:
            if a < b and i < len(src):
                a *= src[i]
                gi.append(i)
                i += 1
            elif j < len(dst):
                b *= dst[j]
                gj.append(j)
                j += 1
            else:
                break
        while i < len(src) and src[i] == 1 and (j >= len(dst) or dst[j] != 1):
            gi.append(i)
            i += 1
        groups.append((gi, gj))
    return groups


def _reshape(p: _Propagation, node: Node) -> Sharding:
    """A split stays on a reshaped dimension when it is on the group's outermost non-unit dimension and the
    result's outermost dimension divides; otherwise the input is gathered on that dimension first."""
    source = node.args[0]
    layout = p.layout(source)
    src, dst = _shape(source), _shape(node)
    out: list[tuple[str, ...]] = [()] * len(dst)
    need = list(layout.spec)
    for gi, gj in _groups(src, dst):
        sharded = [d for d in gi if layout.spec[d]]
        if not sharded:
            continue
        lead_src = next((d for d in gi if src[d] != 1), None)
        lead_dst = next((d for d in gj if dst[d] != 1), None)
        keep = sharded[0] == lead_src and lead_dst is not None
        if keep:
            pieces = layout.splits(lead_src)
            keep = int(dst[lead_dst]) % pieces == 0
        for d in sharded:
            if keep and d == lead_src:
                out[lead_dst] = layout.spec[d]
            else:
                need[d] = ()
    p.need(source, node, tuple(need), layout.partial)
    return p.sharding(tuple(out), layout.partial)


def _expand(p: _Propagation, node: Node) -> Sharding:
    source = node.args[0]
    layout, src, dst = p.layout(source), _shape(source), _shape(node)
    offset = len(dst) - len(src)
    spec = [()] * offset + [layout.spec[i] if src[i] == dst[offset + i] else () for i in range(len(src))]
    return p.sharding(tuple(spec), layout.partial)


def _unsqueeze(p: _Propagation, node: Node) -> Sharding:
    layout = p.layout(node.args[0])
    dim = node.args[1] % (len(layout.spec) + 1)
    spec = list(layout.spec)
    spec.insert(dim, ())
    return p.sharding(tuple(spec), layout.partial)


def _squeeze(p: _Propagation, node: Node) -> Sharding:
    layout = p.layout(node.args[0])
    shape = _shape(node.args[0])
    dims = node.args[1] if len(node.args) > 1 else range(len(shape))
    dims = {d % len(shape) for d in ([dims] if isinstance(dims, int) else dims) if shape[d % len(shape)] == 1}
    return p.sharding(tuple(s for i, s in enumerate(layout.spec) if i not in dims), layout.partial)


def _whole_along(p: _Propagation, node: Node, source: Node, dims: Sequence[int]) -> Spec:
    """`source`'s layout with `dims` gathered (what slicing, splitting, softmax and norms along them need)."""
    layout = p.layout(source)
    rank = len(layout.spec)
    wanted = {d % rank for d in dims}
    spec = tuple(() if i in wanted else axes for i, axes in enumerate(layout.spec))
    p.need(source, node, spec)
    return spec


def _slice(p: _Propagation, node: Node) -> Sharding:
    source, dim = node.args[0], node.args[1] if len(node.args) > 1 else 0
    if _shape(node)[dim] == _shape(source)[dim]:
        return _identity(p, node)
    return p.sharding(_whole_along(p, node, source, [dim]))


def _select(p: _Propagation, node: Node) -> Sharding:
    spec = list(_whole_along(p, node, node.args[0], [node.args[1]]))
    del spec[node.args[1] % len(spec)]
    return p.sharding(tuple(spec))


def _split(p: _Propagation, node: Node) -> tuple[Sharding, ...]:
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    spec = _whole_along(p, node, node.args[0], [dim])
    return tuple(p.sharding(spec) for _ in node.meta["val"])


def _along(p: _Propagation, node: Node) -> Sharding:
    """softmax, log_softmax, cumsum: whole along their dimension."""
    return p.sharding(_whole_along(p, node, node.args[0], [node.args[1]]))


def _cat(p: _Propagation, node: Node) -> Sharding:
    tensors = [t for t in node.args[0] if _shape(t) is not None and len(_shape(t)) == len(_shape(node))]
    dim = (node.args[1] if len(node.args) > 1 else 0) % len(_shape(node))
    leader = max(tensors, key=lambda a: len(p.layout(a).sharded_axes()))
    spec = tuple(() if i == dim else axes for i, axes in enumerate(p.layout(leader).spec))
    for t in tensors:
        p.need(t, node, spec)
    return p.sharding(spec)


def _reduce(p: _Propagation, node: Node) -> Sharding:
    """sum/mean over dims: a split reduced dimension leaves a partial sum (reduced when a user needs it)."""
    source = node.args[0]
    layout = p.layout(source)
    rank = len(layout.spec)
    dims = node.args[1] if len(node.args) > 1 and node.args[1] is not None else list(range(rank))
    dims = {d % rank for d in ([dims] if isinstance(dims, int) else dims)}
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    partial = list(layout.partial) + [a for d in sorted(dims) for a in layout.spec[d]]
    spec = [() if i in dims else axes for i, axes in enumerate(layout.spec)]
    if not keepdim:
        spec = [axes for i, axes in enumerate(spec) if i not in dims]
    return p.sharding(tuple(spec), partial)


def _matmul(p: _Propagation, node: Node) -> Sharding:
    """mm, addmm, bmm: batch and row splits of the first operand and column splits of the second carry to the
    output; a split contraction leaves a partial sum, reduced before addmm adds its bias. Where the operands
    conflict, the weight (between two activations, the second operand) is moved to the other's layout."""
    bias = node.args[0] if node.target == aten.addmm.default else None
    a, b = node.args[-2:] if bias is not None else node.args[:2]
    la, lb = p.layout(a), p.layout(b)
    batch = len(la.spec) - 2
    a_leads = not p.is_weight(a) or p.is_weight(b)
    lead, other = (la, lb) if a_leads else (lb, la)
    lead_k = lead.spec[-1] if a_leads else lead.spec[-2]
    other_k = other.spec[-2] if a_leads else other.spec[-1]
    used = set(lead.sharded_axes())
    k = lead_k or tuple(x for x in other_k if x not in used)
    free = tuple(x for x in (other.spec[-1] if a_leads else other.spec[-2]) if x not in used | set(k))
    if a_leads:
        sa = la.spec[:-1] + (k,)
        sb = la.spec[:batch] + (k, free)
    else:
        sb = lb.spec[:-2] + (k, lb.spec[-1])
        sa = lb.spec[:batch] + (free, k)
    partials = [x for x in (la.partial, lb.partial) if x]
    taken = set(k) | {x for d in sa[:-1] + sb[-1:] for x in d}
    keep_partial = partials[0] if len(partials) == 1 and not taken & set(partials[0]) else ()
    p.need(a, node, sa, la.partial if la.partial == keep_partial else ())
    p.need(b, node, sb, lb.partial if lb.partial == keep_partial and not la.partial else ())
    spec = sa[:batch] + (sa[-2], sb[-1])
    partial = tuple(k) + tuple(x for x in keep_partial if x not in k)
    if bias is None or not partial:
        if bias is not None:
            p.need(bias, node, _broadcast_spec(spec, _shape(bias)))
        return p.sharding(spec, partial)
    p.collectives.append(Collective("all-reduce", node.name, node.name, partial, _nbytes(node.meta["val"])))
    p.need(bias, node, _broadcast_spec(spec, _shape(bias)))
    return p.sharding(spec)


def _broadcast_spec(spec: Spec, shape: Sequence[int]) -> Spec:
    """The part of an output layout `spec` that an operand of `shape`, broadcast against it, takes."""
    offset = len(spec) - len(shape)
    return tuple(spec[offset + i] if size != 1 else () for i, size in enumerate(shape))


def _embedding(p: _Propagation, node: Node) -> Sharding:
    """A table split over its rows (vocabulary-parallel) gives partial sums: each device looks up the rows it
    holds, zeros elsewhere. Axes the indices already use are gathered on the table (FSDP)."""
    table, indices = node.args[0], node.args[1]
    lt, li = p.layout(table), p.layout(indices)
    used = set(li.sharded_axes())
    rows = tuple(a for a in lt.spec[0] if a not in used)
    cols = tuple(a for a in lt.spec[1] if a not in used | set(rows))
    p.need(table, node, (rows, cols))
    p.need(indices, node, li.spec)
    return p.sharding(li.spec + (cols,), rows)


def _layer_norm(p: _Propagation, node: Node) -> tuple[Sharding, ...]:
    x, shape, weight, bias = node.args[:4]
    norm_dims = range(len(_shape(x)) - len(shape), len(_shape(x)))
    spec = _whole_along(p, node, x, norm_dims)
    for w in (weight, bias):
        if isinstance(w, Node):
            p.need(w, node, ((),) * len(_shape(w)))
    stats = tuple(() if i in norm_dims else axes for i, axes in enumerate(spec))
    return p.sharding(spec), p.sharding(stats), p.sharding(stats)


def _attention(p: _Propagation, node: Node) -> Sharding:
    """Scaled dot-product attention over [B, heads, T, head_dim]: batch and heads may stay split (the same way
    for q, k and v), sequence and head_dim are gathered; a mask follows q where its dimensions are full."""
    q, k, v = node.args[:3]
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    lq = p.layout(q)
    spec = (lq.spec[0], lq.spec[1], (), ())
    for t in (q, k, v):
        p.need(t, node, spec)
    if isinstance(mask, Node) and _shape(mask) is not None:
        mshape, out = _shape(mask), _shape(node)
        offset = len(out) - len(mshape)
        p.need(mask, node, tuple(spec[offset + i] if s == out[offset + i] and offset + i < 2 else ()
                                 for i, s in enumerate(mshape)))
    return p.sharding(spec)


_RULES: dict[Any, Callable[[_Propagation, Node], Any]] = {
    aten.clone.default: _identity, aten.alias.default: _identity, aten._to_copy.default: _identity,
    aten.lift_fresh_copy.default: _identity, aten.detach.default: _identity, aten.permute.default: _permute,
    aten.t.default: _permute, aten.transpose.int: _permute, aten.view.default: _reshape,
    aten._unsafe_view.default: _reshape, aten.reshape.default: _reshape, aten.expand.default: _expand,
    aten.unsqueeze.default: _unsqueeze, aten.squeeze.dims: _squeeze, aten.squeeze.dim: _squeeze,
    aten.squeeze.default: _squeeze, aten.slice.Tensor: _slice, aten.select.int: _select,
    aten.split_with_sizes.default: _split, aten.split.Tensor: _split, aten._softmax.default: _along,
    aten._log_softmax.default: _along, aten.cumsum.default: _along, aten.cat.default: _cat,
    aten.sum.dim_IntList: _reduce, aten.mean.dim: _reduce, aten.mm.default: _matmul, aten.addmm.default: _matmul,
    aten.bmm.default: _matmul, aten.embedding.default: _embedding, aten.native_layer_norm.default: _layer_norm,
    aten.scaled_dot_product_attention.default: _attention, torch.ops.crossgraph.attention.default: _attention}


def propagate(graph: Graph, mesh: Mesh) -> ShardingReport:
    """Annotate every tensor-valued node of `graph` with its propagated Sharding (placeholders keep the plan's)
    and report the implied collectives and per-device memory."""
    walk = _Propagation(graph, mesh)
    walk.run()
    for node, layout in walk.layouts.items():
        if node.op == "call_function" and isinstance(layout, Sharding):
            annotations.put(node, layout.with_(source="propagated"))
    weight_bytes = sum(walk.layout(n).local_bytes(n.meta["val"], walk.label(n)) for n in walk.weights)
    return ShardingReport(mesh, walk.collectives, walk.gathered, weight_bytes, _peak(graph, walk),
                          sum(_nbytes(n.meta["val"]) for n in walk.weights))


def _peak(graph: Graph, walk: _Propagation) -> int:
    """The largest sum of live activations on one device, walking the graph in order (inputs included)."""
    last_use = {}
    for node in graph.fx.nodes:
        for arg in node.all_input_nodes:
            last_use[arg] = node
    live: dict[Node, int] = {}
    peak = total = 0
    for node in graph.fx.nodes:
        layout = walk.layouts.get(node)
        if node not in walk.weights and isinstance(layout, Sharding):
            live[node] = math.prod(layout.local_shape(_shape(node))) * node.meta["val"].element_size()
            total += live[node]
        peak = max(peak, total)
        for arg in node.all_input_nodes:
            if last_use.get(arg) is node:
                total -= live.pop(arg, 0)
    return peak

"""The mutation table: plant single-op bugs in what a target lowers and measure whether `check` catches them.

For each model and target, the graph the target is given (after its default pass pipeline) is copied and one
node of the copy is changed (a "mutation"); the copy is lowered and run on a few examples and judged, output by
output, against the untouched references: the model run eagerly as written and its float64 run (exactly what
`crossgraph check` compares with). The reference side never sees a mutation.

Per trial:
- detected: the judge fails at least one example (a lowering or run that raises counts too, as `check` would
  exit 1; such trials are listed as "error").
- localized: `compiler.localize.first_divergence(mutated, target, inputs, policy, reference, oracle=...)` on the
  first failing example, where `reference` is `reference_values(unmutated, inputs)` and `oracle` the float64
  values (`oracle_values`) that `first_divergent_node` judges nodes by: the UNMUTATED graph run by an fx
  Interpreter, matched to the mutated graph's nodes by name (mutations keep node names); candidate values are
  the mutated graph's on the target (probe lowerings / jax's op-by-op run). Right node: the blamed node is the
  mutated node; for `transposed_weight`, which inserts a permute on a weight, the node whose input was rewired
  (or the inserted permute itself). An exception from the localizer is recorded as "localizer raised".
- no-op: the mutated graph run eagerly (fx Interpreter, float32) gives outputs bit-identical to the unmutated
  graph's on every example (a dropped all-ones mask, a doubled -inf fill): not a bug; out of every denominator.
- effect: max |mutated - unmutated| / max |unmutated| over the outputs and examples, eagerly; shows whether a
  miss was a small bug or a blind spot.

False alarms: `check(model, args, targets, examples=20)` on the unmutated model; every failing example counts.

Mutation kinds (sites are found by op pattern after the target's passes; a site whose change would alter the
shape of anything past a few nodes, or of an output, is skipped):
  wrong_constant     a scalar argument (|c| >= 1e-3) of mul/div/add/sub/rsub/pow, or attention's scale: c -> 2c
  swapped_operands   sub/div/mm/bmm/matmul/addmm operands, attention q<->k, cat's first two, rotary cos<->sin,
                     where's branches, layer norm weight<->bias
  off_by_one_slice   slice start/end shifted by one (same length), select index +-1, arange start/end +1
  wrong_reduce_dim   sum/mean/amax/amin/var/softmax/log_softmax/argmax/cumsum dim -> another dim (same size
                     where there is one)
  dropped_mask       masked_fill/where/add/mul of a mask -> its unmasked input (aten.clone, same node name);
                     attention's mask -> None; attention causal=True -> False
  gelu_tanh          gelu / bias_gelu approximate 'none' <-> 'tanh'
  norm_eps           layer norm (native_layer_norm, add_layer_norm), rms_norm and batch norm eps -> 1e-3
                     (x100 when already >= 1e-3); decomposed norms: the add of a small scalar to a mean/var
  transposed_weight  a square 2-D weight (or a conv weight, kernel transposed) read by mm/addmm/conv/...: a
                     permute inserted between the weight and the node that reads it

Run: `python bench/mutations.py` (everything), or e.g.
`python bench/mutations.py --models mlp,gpt2 --targets onnx,jax --max-sites 1 --out /tmp/m` for a quick run.
Results: `bench/results/mutations-<machine>-<date>.{json,md}`, rewritten (atomically) after every model.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib
import json
import logging
import math
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.utils._pytree as pytree

from crossgraph.compiler import strategies
from crossgraph.compiler.artifact import write_atomically
from crossgraph.compiler.benchmark import machine
from crossgraph.compiler.judge import judge
from crossgraph.compiler.parity import check
from crossgraph.compiler.pipeline import Pipelines, passes_for
from crossgraph.compiler.subject import Subject, to_numpy
from crossgraph.compiler.targets import TARGETS
from crossgraph.compiler.tolerance import TolerancePolicy
from crossgraph.graphs import Graph, capture
from crossgraph.passes import fake, program
from crossgraph.passes.program import copy_graph

aten = torch.ops.aten
FORMAT = "crossgraph.mutations/1"
KINDS = ("wrong_constant", "swapped_operands", "off_by_one_slice", "wrong_reduce_dim", "dropped_mask",
         "gelu_tanh", "norm_eps", "transposed_weight")
MODELS = ("mlp", "gpt2", "llama", "bert", "resnet", "vit", "hf-gpt2", "hf-bert")
RESULTS = Path(__file__).resolve().parent / "results"
NEGLIGIBLE = 1e-6
"""An output effect (max |mutated - unmutated| / max |output|, eager float32) below this is float32 noise in size
(~8 ulps): such a mutation stays in the denominators, and the tables also give the rate without it."""


# ---- models ---------------------------------------------------------------------------------------------------

class _Logits(torch.nn.Module):
    """A Hugging Face model whose call returns one tensor (GPT-2's logits, BERT's last hidden state)."""

    def __init__(self, model: torch.nn.Module, field: str) -> None:
        super().__init__()
        self.model, self.field = model, field

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        kwargs = {"use_cache": False} if self.field == "logits" else {}
        if attention_mask is not None:
            kwargs["attention_mask"] = attention_mask
        return getattr(self.model(input_ids, **kwargs), self.field)


def _hf_norms(model: torch.nn.Module) -> torch.nn.Module:
    """HF initializes norms to ones and biases to zeros: random values make weight/bias swaps visible."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() or "ln_" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


def model_factory(name: str) -> tuple[Any, tuple[torch.Tensor, ...]]:
    """(model, args) for a model name: ours from `crossgraph.models.<name>:tiny`, HF ones from a tiny config."""
    if name.startswith("hf-"):
        import transformers
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, 96, (2, 8), generator=g)
        if name == "hf-gpt2":
            config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=96, n_positions=32)
            return _Logits(_hf_norms(transformers.GPT2LMHeadModel(config).eval()), "logits").eval(), (ids,)
        if name == "hf-bert":
            config = transformers.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=64,
                                             max_position_embeddings=32)
            mask = torch.ones(2, 8, dtype=torch.int64)
            mask[1, 5:] = 0
            model = _Logits(_hf_norms(transformers.BertModel(config).eval()), "last_hidden_state").eval()
            return model, (ids, mask)
        raise SystemExit(f"unknown model {name}")
    made = importlib.import_module(f"crossgraph.models.{name}").tiny()
    model, args = made[0], made[1]
    return model, (args,) if isinstance(args, torch.Tensor) else tuple(args)


# ---- sites and mutations --------------------------------------------------------------------------------------

class Unfit(Exception):
    """The mutation cannot be planted at this site (shapes would not fit)."""


@dataclasses.dataclass
class Site:
    kind: str
    node: str
    op: str
    change: str
    apply: Callable[[Graph], set[str]]
    """Mutates a copy of the graph in place; returns the names that count as the right node to blame."""


def _nodes(graph: Graph) -> dict[str, torch.fx.Node]:
    return {n.name: n for n in graph.fx.nodes}


def _val(node: Any) -> Any:
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def _scalar(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def refresh(graph: Graph, touched: set[torch.fx.Node], limit: int = 8) -> None:
    """Re-derive meta["val"] of `touched` nodes and of every node downstream whose value's shape changes;
    Unfit when a change reaches an output or spreads past `limit` nodes. Commits only on success."""
    new_vals: dict[torch.fx.Node, Any] = {}
    changed: set[torch.fx.Node] = set()
    with fake.fake_mode(graph):
        for node in graph.fx.nodes:
            if node.op == "output":
                if any(i in changed for i in node.all_input_nodes):
                    raise Unfit("the change reaches an output's shape")
                continue
            if node.op != "call_function":
                continue
            if node not in touched and not any(i in changed for i in node.all_input_nodes):
                continue
            saved = {i: i.meta.get("val") for i in node.all_input_nodes if i in new_vals}
            for i in saved:
                i.meta["val"] = new_vals[i]
            try:
                val = fake.evaluate(node)
            except Exception as exc:
                raise Unfit(f"{node.name}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}") from None
            finally:
                for i, v in saved.items():
                    i.meta["val"] = v
            old = node.meta.get("val")
            new_vals[node] = val
            if old is not None and not fake.same_meta(old, val):
                changed.add(node)
                if len(changed) > limit:
                    raise Unfit("the shape change spreads too far")
    for node, val in new_vals.items():
        if node.meta.get("val") is None or node in changed:
            node.meta["val"] = val


def _edit(name: str, args: Callable[[torch.fx.Node], tuple] | None = None,
          kwargs: Callable[[torch.fx.Node], dict] | None = None, target: Any = None) -> Callable[[Graph], set[str]]:
    """A mutation that rewrites one node in place (same name): new args / kwargs / target."""
    def apply(graph: Graph) -> set[str]:
        node = _nodes(graph)[name]
        if target is not None:
            node.target = target
        if args is not None:
            node.args = args(node)
        if kwargs is not None:
            node.kwargs = kwargs(node)
        refresh(graph, {node})
        return {name}
    return apply


def _set_arg(args: tuple, index: int, value: Any) -> tuple:
    out = list(args)
    while len(out) <= index:
        out.append(None)
    out[index] = value
    return tuple(out)


def _swap(args: tuple, i: int, j: int) -> tuple:
    out = list(args)
    out[i], out[j] = out[j], out[i]
    return tuple(out)


_CONSTANT_OPS = {aten.mul.Tensor, aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar, aten.add.Tensor,
                 aten.add.Scalar, aten.sub.Tensor, aten.sub.Scalar, aten.rsub.Scalar, aten.rsub.Tensor,
                 aten.pow.Tensor_Scalar, aten.pow.Scalar}


def _dialect(name: str) -> Any:
    try:
        return getattr(torch.ops.crossgraph, name).default
    except (AttributeError, RuntimeError):
        return None


def _sites_wrong_constant(graph: Graph) -> list[Site]:
    out = []
    attention = _dialect("attention")
    for n in graph.fx.nodes:
        if n.op != "call_function":
            continue
        if n.target in _CONSTANT_OPS:
            for i, a in enumerate(n.args):
                if _scalar(a) and abs(a) >= 1e-3:
                    new = a * 2 if isinstance(a, float) else a + 1
                    out.append(Site("wrong_constant", n.name, str(n.target), f"arg {i}: {a!r} -> {new!r}",
                                    _edit(n.name, args=lambda node, i=i, new=new: _set_arg(node.args, i, new))))
        elif attention is not None and n.target is attention and len(n.args) > 5 and _scalar(n.args[5]):
            a = n.args[5]
            out.append(Site("wrong_constant", n.name, str(n.target), f"scale {a:.6g} -> {2 * a:.6g}",
                            _edit(n.name, args=lambda node, a=a: _set_arg(node.args, 5, 2 * a))))
    return out


def _sites_swapped(graph: Graph) -> list[Site]:
    pairs = {aten.sub.Tensor: (0, 1), aten.div.Tensor: (0, 1), aten.mm.default: (0, 1), aten.bmm.default: (0, 1),
             aten.matmul.default: (0, 1), aten.addmm.default: (1, 2), aten.where.self: (1, 2),
             aten.native_layer_norm.default: (2, 3)}
    for name, pair in (("attention", (0, 1)), ("rotary_embedding", (1, 2)), ("add_layer_norm", (2, 3))):
        op = _dialect(name)
        if op is not None:
            pairs[op] = pair
    out = []
    for n in graph.fx.nodes:
        if n.op != "call_function":
            continue
        if n.target in pairs:
            i, j = pairs[n.target]
            if len(n.args) > j and isinstance(n.args[i], torch.fx.Node) and isinstance(n.args[j], torch.fx.Node) \
                    and n.args[i] is not n.args[j]:
                out.append(Site("swapped_operands", n.name, str(n.target), f"args {i} <-> {j}",
                                _edit(n.name, args=lambda node, i=i, j=j: _swap(node.args, i, j))))
        elif n.target is aten.cat.default and len(n.args[0]) >= 2 and n.args[0][0] is not n.args[0][1]:
            out.append(Site("swapped_operands", n.name, str(n.target), "tensors 0 <-> 1",
                            _edit(n.name, args=lambda node: ([node.args[0][1], node.args[0][0], *node.args[0][2:]],
                                                             *node.args[1:]))))
    return out


def _sites_slice(graph: Graph) -> list[Site]:
    out = []
    for n in graph.fx.nodes:
        if n.op != "call_function":
            continue
        if n.target is aten.slice.Tensor:
            val = _val(n.args[0])
            if val is None:
                continue
            dim = n.args[1] if len(n.args) > 1 else 0
            size = int(val.shape[dim])
            start = n.args[2] if len(n.args) > 2 and n.args[2] is not None else 0
            end = n.args[3] if len(n.args) > 3 and n.args[3] is not None else size
            step = n.args[4] if len(n.args) > 4 else 1
            if not all(isinstance(x, int) for x in (start, end, step)):
                continue
            start, end = (start + size if start < 0 else start), min(end + size if end < 0 else end, size)
            if end < size:
                s, e = start + 1, end + 1
            elif start >= 1:
                s, e = start - 1, end - 1
            else:
                continue
            out.append(Site("off_by_one_slice", n.name, str(n.target), f"[{start}:{end}] -> [{s}:{e}] (dim {dim})",
                            _edit(n.name, args=lambda node, dim=dim, s=s, e=e: (node.args[0], dim, s, e,
                                                                                *node.args[4:]))))
        elif n.target is aten.select.int and _val(n.args[0]) is not None:
            size = int(_val(n.args[0]).shape[n.args[1]])
            index = n.args[2] + size if n.args[2] < 0 else n.args[2]
            new = index + 1 if index + 1 < size else index - 1
            if 0 <= new < size:
                out.append(Site("off_by_one_slice", n.name, str(n.target), f"index {index} -> {new}",
                                _edit(n.name, args=lambda node, new=new: _set_arg(node.args, 2, new))))
        elif n.target in (aten.arange.start, aten.arange.start_step) and all(_scalar(a) for a in n.args[:2]):
            a, b = n.args[0], n.args[1]
            out.append(Site("off_by_one_slice", n.name, str(n.target), f"arange({a}, {b}) -> ({a + 1}, {b + 1})",
                            _edit(n.name, args=lambda node: (node.args[0] + 1, node.args[1] + 1, *node.args[2:]))))
    return out


_REDUCE_LIST = {aten.sum.dim_IntList, aten.mean.dim, aten.amax.default, aten.amin.default, aten.var.correction,
                aten.var.dim, aten.std.correction}
_REDUCE_ONE = {aten._softmax.default, aten._log_softmax.default, aten.softmax.int, aten.log_softmax.int,
               aten.argmax.default, aten.argmin.default, aten.cumsum.default}


def _reduce_alternatives(node: torch.fx.Node) -> list[Any]:
    """Other dims for the node's (first) reduced dim: a dim of the same size first, then the rest."""
    val = _val(node.args[0])
    if val is None or len(node.args) < 2 or node.args[1] is None:
        return []
    rank = val.dim()
    dims = node.args[1]
    listed = isinstance(dims, (list, tuple))
    first = (dims[0] if listed else dims) % max(rank, 1)
    taken = {d % rank for d in (dims if listed else [dims])}
    others = [d for d in range(rank) if d not in taken]
    others.sort(key=lambda d: (int(val.shape[d]) != int(val.shape[first]), d))
    return [([d, *[x for x in dims if x % rank != first]] if listed else d) for d in others]


def _reduce_apply(name: str, alternatives: list[Any]) -> Callable[[Graph], set[str]]:
    def apply(graph: Graph) -> set[str]:
        node = _nodes(graph)[name]
        original, reasons = node.args, []
        for dims in alternatives:
            node.args = _set_arg(original, 1, dims)
            try:
                refresh(graph, {node})
                return {name}
            except Unfit as exc:
                reasons.append(f"{dims}: {exc}")
        node.args = original
        raise Unfit("; ".join(reasons) or "no other dim")
    return apply


def _sites_reduce(graph: Graph) -> list[Site]:
    out = []
    for n in graph.fx.nodes:
        if n.op == "call_function" and (n.target in _REDUCE_LIST or n.target in _REDUCE_ONE):
            alternatives = _reduce_alternatives(n)
            if alternatives:
                out.append(Site("wrong_reduce_dim", n.name, str(n.target), f"dim {n.args[1]} -> {alternatives[0]}"
                                + (" (or the next that fits)" if len(alternatives) > 1 else ""),
                                _reduce_apply(n.name, alternatives)))
    return out


def _ancestor_inputs(node: torch.fx.Node, names: dict[torch.fx.Node, str], memo: dict) -> frozenset[str]:
    """The user inputs (by name) a node's value depends on."""
    if node in memo:
        return memo[node]
    if node.op == "placeholder":
        found = frozenset({names[node]}) if node in names else frozenset()
    else:
        found = frozenset().union(*(_ancestor_inputs(i, names, memo) for i in node.all_input_nodes))
    memo[node] = found
    return found


_MASK_MAKERS = {aten.triu.default, aten.tril.default, aten.lt.Tensor, aten.gt.Tensor, aten.le.Tensor,
                aten.ge.Tensor, aten.lt.Scalar, aten.le.Scalar, aten.gt.Scalar, aten.ge.Scalar, aten.eq.Scalar,
                aten.masked_fill.Scalar, aten.masked_fill.Tensor, aten.where.self, aten.where.ScalarOther,
                aten.where.ScalarSelf}


def _mask_derived(node: Any, users: dict[torch.fx.Node, str], memo: dict, depth: int = 12) -> bool:
    """A value computed from mask inputs only, or from constants through a comparison/where (a causal mask)."""
    if not isinstance(node, torch.fx.Node):
        return False
    inputs = _ancestor_inputs(node, users, memo)
    if inputs:
        return all("mask" in name.lower() for name in inputs)
    seen, stack = set(), [node]
    while stack and depth > 0:
        n = stack.pop()
        depth -= 1
        if n in seen or n.op != "call_function":
            continue
        seen.add(n)
        if n.target in _MASK_MAKERS:
            return True
        stack.extend(n.all_input_nodes)
    return False


def _fill_like(x: Any) -> bool:
    if not isinstance(x, torch.fx.Node):
        return True
    val = _val(x)
    return x.op == "placeholder" or (val is not None and val.dim() == 0) or x.target in (
        aten.full.default, aten.scalar_tensor.default, aten.lift_fresh_copy.default)


def _sites_mask(graph: Graph) -> list[Site]:
    users = dict(zip(graph.input_nodes(), graph.input_names))
    memo: dict = {}
    attention = _dialect("attention")
    out = []

    def unmask(n: torch.fx.Node, keep: int, what: str) -> Site:
        return Site("dropped_mask", n.name, str(n.target), what,
                    _edit(n.name, target=aten.clone.default, args=lambda node: (node.args[keep],),
                          kwargs=lambda node: {}))

    for n in graph.fx.nodes:
        if n.op != "call_function":
            continue
        if n.target in (aten.masked_fill.Scalar, aten.masked_fill.Tensor):
            out.append(unmask(n, 0, "masked_fill -> its input"))
        elif n.target is aten.where.self:
            if _fill_like(n.args[2]) and not _fill_like(n.args[1]):
                out.append(unmask(n, 1, "where -> its unmasked branch"))
            elif _fill_like(n.args[1]) and not _fill_like(n.args[2]):
                out.append(unmask(n, 2, "where -> its unmasked branch"))
        elif n.target in (aten.add.Tensor, aten.mul.Tensor) and len(n.args) == 2 and all(
                isinstance(a, torch.fx.Node) for a in n.args):
            for m in (1, 0):
                if _mask_derived(n.args[m], users, memo) and not _mask_derived(n.args[1 - m], users, memo):
                    out.append(unmask(n, 1 - m, f"{n.target} of a mask -> its unmasked input"))
                    break
        elif attention is not None and n.target is attention:
            if len(n.args) > 3 and isinstance(n.args[3], torch.fx.Node):
                out.append(Site("dropped_mask", n.name, str(n.target), "mask -> None",
                                _edit(n.name, args=lambda node: _set_arg(node.args, 3, None))))
            if len(n.args) > 4 and n.args[4] is True:
                out.append(Site("dropped_mask", n.name, str(n.target), "causal True -> False",
                                _edit(n.name, args=lambda node: _set_arg(node.args, 4, False))))
    return out


def _sites_gelu(graph: Graph) -> list[Site]:
    bias_gelu = _dialect("bias_gelu")
    flip = {"none": "tanh", "tanh": "none"}
    out = []
    for n in graph.fx.nodes:
        if n.op != "call_function":
            continue
        if n.target is aten.gelu.default:
            old = n.kwargs.get("approximate", n.args[1] if len(n.args) > 1 else "none")
            out.append(Site("gelu_tanh", n.name, str(n.target), f"approximate {old!r} -> {flip[old]!r}",
                            _edit(n.name, args=lambda node: node.args[:1],
                                  kwargs=lambda node, new=flip[old]: {**node.kwargs, "approximate": new})))
        elif bias_gelu is not None and n.target is bias_gelu and len(n.args) > 2:
            old = n.args[2]
            out.append(Site("gelu_tanh", n.name, str(n.target), f"approximate {old!r} -> {flip[old]!r}",
                            _edit(n.name, args=lambda node, new=flip[old]: _set_arg(node.args, 2, new))))
    return out


def _sites_eps(graph: Graph) -> list[Site]:
    where = {aten.native_layer_norm.default: 4, aten.layer_norm.default: 4,
             aten._native_batch_norm_legit_no_training.default: 6, aten.native_batch_norm.default: 7,
             aten.native_group_norm.default: 7}
    for name, i in (("add_layer_norm", 4), ("rms_norm", 2)):
        op = _dialect(name)
        if op is not None:
            where[op] = i
    out = []
    for n in graph.fx.nodes:
        if n.op != "call_function":
            continue
        i = where.get(n.target)
        if i is None and n.target in (aten.add.Tensor, aten.add.Scalar) and len(n.args) == 2 and \
                isinstance(n.args[0], torch.fx.Node) and n.args[0].target in (aten.mean.dim, aten.var.correction,
                                                                               aten.var.dim) \
                and _scalar(n.args[1]) and 0 < n.args[1] < 1e-2:
            i = 1  # a decomposed norm: mean(x^2) + eps, var + eps
        if i is None or len(n.args) <= i or not _scalar(n.args[i]):
            continue
        old = n.args[i]
        new = 1e-3 if old < 1e-3 else old * 100
        out.append(Site("norm_eps", n.name, str(n.target), f"eps {old:g} -> {new:g}",
                        _edit(n.name, args=lambda node, i=i, new=new: _set_arg(node.args, i, new))))
    return out


_WEIGHT_READERS = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.matmul.default, aten.linear.default,
                   aten.convolution.default, aten.conv2d.default}
_LAYOUT = {aten.permute.default, aten.t.default, aten.transpose.int, aten.view.default, aten.reshape.default,
           aten.expand.default, aten.unsqueeze.default, aten.clone.default}


def _sites_weight(graph: Graph) -> list[Site]:
    state = program.state_names(graph)
    out, seen = [], set()
    for n in graph.fx.nodes:
        if n.op != "call_function" or n.target not in _WEIGHT_READERS:
            continue
        for arg in n.args:
            # walk back through layout ops to a weight: the site is the node that reads the weight itself
            reader, x = n, arg
            while isinstance(x, torch.fx.Node) and x.op == "call_function" and x.target in _LAYOUT:
                reader, x = x, x.args[0]
            if not (isinstance(x, torch.fx.Node) and x in state) or (reader.name, x.name) in seen:
                continue
            val = _val(x)
            if val is None:
                continue
            shape = tuple(int(s) for s in val.shape)
            if len(shape) == 2 and shape[0] == shape[1] and shape[0] > 1:
                perm = [1, 0]
            elif len(shape) == 4 and shape[2] == shape[3] and shape[2] > 1:
                perm = [0, 1, 3, 2]
            elif len(shape) == 4 and shape[0] == shape[1]:
                perm = [1, 0, 2, 3]
            else:
                continue
            seen.add((reader.name, x.name))
            out.append(Site("transposed_weight", reader.name, str(reader.target),
                            f"weight {state[x]} {list(shape)} permuted {perm} where {reader.name} reads it",
                            _insert_permute(reader.name, x.name, perm)))
    return out


def _insert_permute(reader_name: str, weight_name: str, perm: list[int]) -> Callable[[Graph], set[str]]:
    def apply(graph: Graph) -> set[str]:
        nodes = _nodes(graph)
        reader, weight = nodes[reader_name], nodes[weight_name]
        with graph.fx.inserting_before(reader):
            new = graph.fx.call_function(aten.permute.default, (weight, perm))
        program.carry_provenance(reader, new)
        reader.replace_input_with(weight, new)
        refresh(graph, {new, reader})
        return {reader_name, new.name}
    return apply


FINDERS = {"wrong_constant": _sites_wrong_constant, "swapped_operands": _sites_swapped,
           "off_by_one_slice": _sites_slice, "wrong_reduce_dim": _sites_reduce, "dropped_mask": _sites_mask,
           "gelu_tanh": _sites_gelu, "norm_eps": _sites_eps, "transposed_weight": _sites_weight}


def spread(items: list, k: int) -> list:
    """At most k items, evenly spread over the list (first and last included)."""
    if len(items) <= k:
        return list(items)
    if k == 1:
        return [items[len(items) // 2]]
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


# ---- running ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Case:
    inputs: tuple[torch.Tensor, ...]
    reference: list[np.ndarray]
    oracle: list[np.ndarray | None] | None


def graph_outputs(graph: Graph, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The graph run by an fx Interpreter (float32, as captured), its user outputs flattened."""
    with torch.no_grad():
        out = torch.fx.Interpreter(graph.exported.graph_module).run(*program.call_args(graph, inputs))
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def effect_of(base: list[list[torch.Tensor]], mutated: list[list[torch.Tensor]]) -> tuple[bool, float]:
    """(bit-identical on every example, max |mutated - base| / max |base| over outputs and examples)."""
    same, effect = True, 0.0
    for b_outs, m_outs in zip(base, mutated):
        for b, m in zip(b_outs, m_outs):
            if b.shape != m.shape:
                return False, math.inf
            if not torch.equal(b, m):
                same = False
                if b.is_floating_point():
                    bd, md = b.double(), m.double()
                    both = torch.isfinite(bd) & torch.isfinite(md)
                    if not bool(both.all()):
                        effect = math.inf
                    scale = float(bd[torch.isfinite(bd)].abs().max()) if bool(torch.isfinite(bd).any()) else 1.0
                    if bool(both.any()):
                        effect = max(effect, float((md - bd)[both].abs().max()) / max(scale, 1e-30))
                else:
                    effect = max(effect, 1.0)
    return same, effect


def node_effect(base: Graph, mutated: Graph, name: str, cases: list[Case]) -> Any:
    """max |mutated - unmutated| / max |unmutated| of the mutated node's own value, eagerly, over the examples
    (None where it cannot be compared: a value that is not one float tensor, a shape change)."""
    from crossgraph.compiler.localize import reference_values
    worst = 0.0
    try:
        for case in cases:
            a = reference_values(base, case.inputs).get(name)
            b = reference_values(mutated, case.inputs).get(name)
            if isinstance(a, (tuple, list)):
                a, b = a[0], b[0]
            if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape \
                    or not a.is_floating_point():
                return None
            a, b = a.double(), b.double()
            ok = torch.isfinite(a) & torch.isfinite(b)
            if not bool(ok.all()):
                return "inf"
            worst = max(worst, float((b - a).abs().max()) / max(float(a.abs().max()), 1e-30))
    except Exception:
        return None
    return worst


def _short(text: Any, n: int = 400) -> str | None:
    if text is None:
        return None
    text = str(text)
    return text if len(text) <= n else text[:n] + "..."


def run_trial(model: Any, args: tuple, target: str, base: Graph, site: Site, cases: list[Case],
              base_outputs: list[list[torch.Tensor]], policy: TolerancePolicy) -> dict[str, Any]:
    from crossgraph.compiler import localize
    start = time.perf_counter()
    row: dict[str, Any] = {"kind": site.kind, "site": site.node, "op": site.op, "change": site.change,
                           "target": target, "status": None, "detected": None, "failed_example": None,
                           "judge": None, "localized_node": None, "localized_right": None,
                           "localizer_raised": None, "localizer_message": None, "effect": None}
    mutated = copy_graph(base)
    try:
        right = site.apply(mutated)
        program.finish(mutated)
    except Unfit as exc:
        row.update(status="unfit", judge=_short(exc), seconds=time.perf_counter() - start)
        return row
    row["right_nodes"] = sorted(right)
    try:
        outs = [graph_outputs(mutated, c.inputs) for c in cases]
    except Exception as exc:
        row.update(status="unfit", judge=_short(f"the mutated graph does not run eagerly: {exc}"),
                   seconds=time.perf_counter() - start)
        return row
    same, effect = effect_of(base_outputs, outs)
    row["effect"] = effect if math.isfinite(effect) else "inf"
    if same:
        row.update(status="no-op", seconds=time.perf_counter() - start)
        return row
    row["node_effect"] = node_effect(base, mutated, site.node, cases)
    t = TARGETS[target]
    failed = None
    try:
        runner = t.prepare(Subject(model, mutated, args))
        for i, case in enumerate(cases):
            outputs = runner(case.inputs)
            verdict = judge(target, mutated, case.reference, outputs, policy, case.oracle)
            if not verdict.ok:
                failed = i
                row["judge"] = _short(verdict.message)
                break
    except Exception as exc:  # `check` reports a target that raises as an error: exit 1, so a detection
        row.update(status="error", detected=True, judge=_short(f"{type(exc).__name__}: {exc}"),
                   seconds=time.perf_counter() - start)
        return row
    row["detected"] = failed is not None
    row["status"] = "detected" if failed is not None else "missed"
    row["failed_example"] = failed
    if failed is not None and t.lowered:
        inputs = cases[failed].inputs
        try:
            reference = localize.reference_values(copy_graph(base), inputs)
            oracle = localize.oracle_values(copy_graph(base), inputs)  # as first_divergent_node judges nodes
            found = localize.first_divergence(mutated, target, tuple(inputs), policy, reference, oracle=oracle)
            if found is None:
                row["localizer_message"] = "no divergent node found"
            else:
                row["localized_node"] = found.blamed.name
                row["localizer_message"] = _short(found.message)
            row["localized_right"] = row["localized_node"] in right
            row["localizer_raised"] = False
        except Exception as exc:
            row["localizer_raised"] = True
            row["localized_right"] = False
            row["localizer_message"] = _short(f"localizer raised {type(exc).__name__}: {exc}\n"
                                              + "".join(traceback.format_exception(exc)[-3:]), 1500)
    row["seconds"] = time.perf_counter() - start
    return row


def false_alarms(model: Any, args: tuple, graph: Graph, targets: list[str], examples: int, seed: int,
                 log: Callable[[str], None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for target in targets:
        start = time.perf_counter()
        try:
            report = check(model, args, [target], graph=graph, examples=examples, seed=seed)
            r = report.targets[target]
            cases = r.cases or []
            statuses = [c.status for c in cases] if cases else [r.status] * examples
            failing = [{"example": c.example, "status": c.status, "error": _short(c.error)}
                       for c in cases if c.status != "pass"]
            if not cases and r.status != "pass":
                failing = [{"example": None, "status": r.status, "error": _short(r.error, 1500)}]
            out[target] = {"status": r.status, "examples": len(statuses),
                           "false_alarms": sum(s != "pass" for s in statuses), "failing": failing,
                           "first_divergent_node": r.first_divergent_node, "seconds": time.perf_counter() - start}
        except Exception as exc:
            out[target] = {"status": "raised", "examples": examples, "false_alarms": examples,
                           "failing": [{"example": None, "status": "raised", "error": _short(repr(exc), 1500)}],
                           "seconds": time.perf_counter() - start}
        log(f"  false alarms {target}: {out[target]['false_alarms']}/{out[target]['examples']} "
            f"({out[target]['status']}, {out[target]['seconds']:.1f}s)")
    return out


def run_model(name: str, opts: argparse.Namespace, log: Callable[[str], None],
              save: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    model, args = model_factory(name)
    graph = capture(model, args)
    result: dict[str, Any] = {"model": name, "false_alarms": {}, "trials": [], "sites": {}}
    policy = TolerancePolicy()
    targets = [t for t in opts.targets]
    if opts.fa_examples > 0:
        result["false_alarms"] = false_alarms(model, args, graph, targets, opts.fa_examples, opts.seed, log)
        save(result)
    drawn = strategies.draw(strategies.inputs(graph, args), opts.examples - 1, seed=opts.seed) \
        if opts.examples > 1 else []
    subject = Subject(model, graph, args)
    cases = []
    for x in [args, *drawn]:
        reference = subject.reference(x)
        oracle = subject.oracle(x, reference)
        cases.append(Case(tuple(x), reference, [None if o is None else to_numpy(o) for o in oracle.outputs]))
    pipelines = Pipelines(graph)
    for target in targets:
        if target == "inductor" and name not in opts.inductor_models:
            continue
        base = graph if target == "eager" else pipelines.run(passes_for(target, None))[0]
        base = copy_graph(base)
        base_outputs = [graph_outputs(base, c.inputs) for c in cases]
        max_sites = opts.inductor_sites if target == "inductor" else opts.max_sites
        for kind in opts.kinds:
            if target == "inductor" and kind not in opts.inductor_kinds:
                continue
            sites = FINDERS[kind](base)
            result["sites"].setdefault(target, {})[kind] = len(sites)
            chosen, tried = [], 0
            # an unfit site is replaced by the next one, so a kind gets up to max_sites planted mutations
            for site in _order(sites, max_sites):
                if len([r for r in chosen if r["status"] != "unfit"]) >= max_sites or tried >= 4 * max_sites:
                    break
                tried += 1
                row = {"model": name, **run_trial(model, args, target, base, site, cases, base_outputs, policy)}
                chosen.append(row)
                result["trials"].append(row)
                loc = ""
                if row["status"] == "detected" and row["localized_right"] is not None:
                    loc = (" localizer RAISED" if row["localizer_raised"] else
                           f" -> {row['localized_node']} {'ok' if row['localized_right'] else 'WRONG'}")
                log(f"  {target:8s} {kind:17s} {site.node:28s} {row['status']:8s}{loc} ({row['seconds']:.1f}s)"
                    + (f" [{site.change}]" if row["status"] != "detected" or not row.get("localized_right") else ""))
            save(result)
    return result


def _order(sites: list[Site], k: int) -> list[Site]:
    """Evenly spread sites first, then the rest (replacements for unfit ones)."""
    first = spread(sites, k)
    return first + [s for s in sites if s not in first]


# ---- summary ---------------------------------------------------------------------------------------------------

def summarize(models: list[dict[str, Any]]) -> dict[str, Any]:
    trials = [t for m in models for t in m["trials"]]
    counted = [t for t in trials if t["status"] in ("detected", "missed", "error")]

    def material(r: dict) -> bool:
        return isinstance(r.get("effect"), str) or (r.get("effect") or 0.0) >= NEGLIGIBLE

    def rates(rows: list[dict]) -> dict[str, Any]:
        det = [r for r in rows if r["detected"]]
        loc = [r for r in det if r["localized_right"] is not None]
        big = [r for r in rows if material(r)]
        return {"total": len(rows), "detected": len(det), "errors": sum(r["status"] == "error" for r in rows),
                "material": len(big), "material_detected": sum(bool(r["detected"]) for r in big),
                "localizable": len(loc), "localized": sum(bool(r["localized_right"]) for r in loc),
                "localizer_raised": sum(bool(r["localizer_raised"]) for r in loc)}

    by_target: dict[str, Any] = {}
    for t in sorted({r["target"] for r in trials}):
        by_target[t] = rates([r for r in counted if r["target"] == t])
        by_target[t]["no_op"] = sum(r["target"] == t and r["status"] == "no-op" for r in trials)
        by_target[t]["unfit"] = sum(r["target"] == t and r["status"] == "unfit" for r in trials)
    by_kind = {k: rates([r for r in counted if r["kind"] == k]) for k in KINDS if any(r["kind"] == k for r in trials)}
    for k in by_kind:
        by_kind[k]["no_op"] = sum(r["kind"] == k and r["status"] == "no-op" for r in trials)
    by_target_kind = {f"{t}/{k}": rates([r for r in counted if r["target"] == t and r["kind"] == k])
                      for t in by_target for k in KINDS}
    fa: dict[str, dict[str, int]] = {}
    for m in models:
        for t, v in m.get("false_alarms", {}).items():
            f = fa.setdefault(t, {"false_alarms": 0, "examples": 0, "models": 0})
            f["false_alarms"] += v["false_alarms"]
            f["examples"] += v["examples"]
            f["models"] += 1
    overall = rates(counted)
    return {"overall": overall, "by_target": by_target, "by_kind": by_kind,
            "by_target_kind": {k: v for k, v in by_target_kind.items() if v["total"]}, "false_alarms": fa}


def _pct(a: int, b: int) -> str:
    return f"{a}/{b} ({100 * a / b:.0f}%)" if b else "-"


def markdown(data: dict[str, Any]) -> str:
    s, m = data["summary"], data["machine"]
    libs = m.get("libraries", {})
    lines = [
        "# Mutation table: planted single-op bugs on the lowered side",
        "",
        f"{m['cpu']}, {m['logical_cpus']} logical CPUs (shared with other jobs while it ran), "
        + ", ".join(f"{k} {v}" for k, v in libs.items() if k in ("torch", "onnxruntime", "onnx", "jax",
                                                                   "transformers", "numpy"))
        + f". Written by `bench/mutations.py` on {data['date']}, {data['seconds'] / 60:.0f} min; "
        f"command: `{data['command']}`.",
        "",
        f"Models: {', '.join(data['options']['models'])}. Each planted mutation is judged on "
        f"{data['options']['examples']} examples (the model's example inputs, then drawn ones, seed "
        f"{data['options']['seed']}); false alarms: the unmutated model through `check(..., examples="
        f"{data['options']['fa_examples']})`. Up to {data['options']['max_sites']} sites per model, target and kind"
        f" (onnx, jax, eager); inductor: {data['options']['inductor_sites']} per kind on "
        f"{', '.join(data['options']['inductor_models'])} only, kinds {', '.join(data['options']['inductor_kinds'])}"
        " (an AOTInductor compile per mutation and per localization). Eager is a control: the mutation is planted"
        " in the captured graph, and eager has no intermediate values to localize.",
        "",
        "Goals: false alarms 0; detection >= 98%; localization to the mutated node >= 90%; the localizer never "
        "raises.",
        "",
        "## Per target",
        "",
        f"| target | detected | detected, effect >= {NEGLIGIBLE:g} | localized (right node) | localizer raised | "
        "no-op (excluded) | false alarms / examples |",
        "|---|---|---|---|---|---|---|",
    ]
    for t, r in s["by_target"].items():
        fa = s["false_alarms"].get(t, {"false_alarms": 0, "examples": 0})
        loc = _pct(r["localized"], r["localizable"]) if t != "eager" else "n/a"
        lines.append(f"| {t} | {_pct(r['detected'], r['total'])} | "
                     f"{_pct(r['material_detected'], r['material'])} | {loc} | "
                     f"{r['localizer_raised'] if t != 'eager' else 'n/a'} | {r['no_op']} | "
                     f"{fa['false_alarms']}/{fa['examples']} |")
    o = s["overall"]
    lines += ["", f"All targets: detected {_pct(o['detected'], o['total'])} ({_pct(o['material_detected'], o['material'])}"
              f" with an output effect >= {NEGLIGIBLE:g}; of which {o['errors']} raised in "
              f"lowering or run), localized {_pct(o['localized'], o['localizable'])}, localizer raised "
              f"{o['localizer_raised']} times.", "", "## Per mutation kind (all targets)", "",
              f"| kind | detected | detected, effect >= {NEGLIGIBLE:g} | localized (right node) | no-op (excluded) |",
              "|---|---|---|---|---|"]
    for k, r in s["by_kind"].items():
        lines.append(f"| {k} | {_pct(r['detected'], r['total'])} | {_pct(r['material_detected'], r['material'])} | "
                     f"{_pct(r['localized'], r['localizable'])} | "
                     f"{r['no_op']} |")
    lines += ["", "## Per target and kind", "", "| target / kind | detected | localized |", "|---|---|---|"]
    for k, r in s["by_target_kind"].items():
        lines.append(f"| {k} | {_pct(r['detected'], r['total'])} | {_pct(r['localized'], r['localizable'])} |")
    found: dict[str, dict[str, int]] = {}
    for mm in data["models"]:
        for t, kinds in mm.get("sites", {}).items():
            for k, n in kinds.items():
                found.setdefault(t, {}).setdefault(k, 0)
                found[t][k] += n
    if found:
        lines += ["", "## Sites found (summed over models, before the per-kind cap)", "",
                  "| target | " + " | ".join(KINDS) + " |", "|---" * (len(KINDS) + 1) + "|"]
        for t, kinds in found.items():
            lines.append(f"| {t} | " + " | ".join(str(kinds.get(k, "-")) for k in KINDS) + " |")
    misses = [t for mm in data["models"] for t in mm["trials"]
              if t["status"] == "missed" or (t["detected"] and t["localized_right"] is False)]
    if misses:
        lines += ["", "## Misses", "", "Undetected mutations, and detections blamed on another node "
                  "(effect: max |mutated - unmutated| / max |output|, eager float32).", "",
                  "| model | target | kind | site | change | effect | node effect | outcome |",
                  "|---|---|---|---|---|---|---|---|"]
        for t in misses:
            eff = t["effect"] if isinstance(t["effect"], str) else f"{t['effect']:.2g}"
            if t["status"] == "missed":
                what = "not detected"
            elif t["localizer_raised"]:
                what = "localizer raised: " + (t["localizer_message"] or "").splitlines()[0][:120]
            else:
                what = f"blamed {t['localized_node']}"
            ne = t.get("node_effect")
            ne = "-" if ne is None else ne if isinstance(ne, str) else f"{ne:.2g}"
            lines.append(f"| {t['model']} | {t['target']} | {t['kind']} | {t['site']} | {t['change']} | {eff} | "
                         f"{ne} | {what} |")
    alarms = [(mm["model"], t, v) for mm in data["models"] for t, v in mm.get("false_alarms", {}).items()
              if v["false_alarms"]]
    if alarms:
        lines += ["", "## False alarms", ""]
        for model, t, v in alarms:
            first = v["failing"][0] if v["failing"] else {}
            lines.append(f"- {model} on {t}: {v['false_alarms']}/{v['examples']} "
                         f"({(first.get('error') or '').splitlines()[0][:200] if first.get('error') else first})")
    lines += ["", "Per-trial records (model, kind, site, change, target, status, judge message, blamed node, "
              "seconds) are in the JSON file beside this one.", ""]
    return "\n".join(lines)


def _csv(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--targets", default="eager,onnx,jax,inductor")
    p.add_argument("--kinds", default=",".join(KINDS))
    p.add_argument("--examples", type=int, default=4, help="examples per mutation (the example inputs + drawn)")
    p.add_argument("--fa-examples", type=int, default=20, help="examples per model for false alarms (0: skip)")
    p.add_argument("--max-sites", type=int, default=2, help="sites per model, target and kind")
    p.add_argument("--inductor-models", default="mlp,gpt2,resnet,hf-bert")
    p.add_argument("--inductor-kinds", default=",".join(KINDS))
    p.add_argument("--inductor-sites", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output stem (default bench/results/mutations-<machine>-<date>)")
    p.add_argument("--render", default=None, metavar="JSON",
                   help="rewrite the summary and Markdown of a results file (a partial one too); run nothing")
    opts = p.parse_args(argv)
    if opts.render:
        path = Path(opts.render)
        data = json.loads(path.read_text())
        data["summary"] = summarize(data["models"])
        write_atomically(path, json.dumps(data, indent=1, default=str))
        write_atomically(path.with_suffix(".md"), markdown(data))
        return 0
    opts.models, opts.targets, opts.kinds = _csv(opts.models), _csv(opts.targets), _csv(opts.kinds)
    opts.inductor_models, opts.inductor_kinds = _csv(opts.inductor_models), _csv(opts.inductor_kinds)
    unknown = [k for k in opts.kinds + opts.inductor_kinds if k not in KINDS]
    if unknown:
        p.error(f"unknown kinds {unknown}; known: {', '.join(KINDS)}")
    torch.manual_seed(opts.seed)
    logging.getLogger("torch._subclasses.fake_tensor").setLevel(logging.CRITICAL)  # unfit sites' shape errors
    description = machine.describe(torch.get_num_threads())
    stem = Path(opts.out) if opts.out else RESULTS / f"mutations-{machine.results_stem(description)}"
    command = "python bench/mutations.py " + " ".join(sys.argv[1:] if argv is None else argv)
    data: dict[str, Any] = {"format": FORMAT, "date": datetime.date.today().isoformat(), "command": command.strip(),
                            "machine": description, "options": {k: v for k, v in vars(opts).items() if k != "out"},
                            "models": [], "seconds": 0.0}
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f}s] {msg}", flush=True)

    def save(current: dict[str, Any] | None = None) -> None:
        models = data["models"] + ([current] if current is not None and current not in data["models"] else [])
        snapshot = {**data, "models": models, "seconds": time.perf_counter() - started}
        snapshot["summary"] = summarize(models)
        write_atomically(stem.with_suffix(".json"), json.dumps(snapshot, indent=1, default=str))
        write_atomically(stem.with_suffix(".md"), markdown(snapshot))

    for name in opts.models:
        log(f"model {name}")
        try:
            result = run_model(name, opts, log, save)
        except Exception as exc:
            log(f"  model {name} failed: {type(exc).__name__}: {exc}")
            traceback.print_exc()
            result = {"model": name, "error": f"{type(exc).__name__}: {exc}", "false_alarms": {}, "trials": [],
                      "sites": {}}
        data["models"].append(result)
        save()
    log(f"done: {stem.with_suffix('.json')}")
    print(json.dumps(summarize(data["models"])["by_target"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

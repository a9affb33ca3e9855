"""Fake-tensor evaluation of single nodes: the meta["val"] a node has given its inputs' meta["val"].

Evaluation runs in the graph's own FakeTensorMode (found on its placeholders), so symbolic sizes of a dynamic
capture stay the same sympy symbols and can be compared without guessing.
"""

from __future__ import annotations

from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.fx import Node
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols, statically_known_true, sym_eq

from crossgraph.graphs import Graph


_SCALARS = (int, float, bool, torch.SymInt, torch.SymFloat, torch.SymBool)


def fake_mode(graph: Graph) -> FakeTensorMode:
    """The FakeTensorMode of the graph's placeholder values (a fresh one for a graph without any)."""
    for node in graph.fx.nodes:
        if node.op != "placeholder":
            break
        if isinstance(node.meta.get("val"), FakeTensor):
            return node.meta["val"].fake_mode
    return FakeTensorMode()


def _input_value(node: Node) -> Any:
    if node.op == "get_attr":  # a higher-order op's subgraph, or an attribute of the graph module
        return getattr(node.graph.owning_module, node.target)
    return node.meta["val"]


def evaluate(node: Node) -> Any:
    """Run a call_function node on its inputs' fake values; call inside the graph's fake mode."""
    args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), _input_value)
    return node.target(*args, **kwargs)


def set_vals(graph: Graph, nodes: set[Node]) -> None:
    """Derive meta["val"] for `nodes` (new call_function nodes of `graph`), in graph order."""
    with fake_mode(graph):
        for node in graph.fx.nodes:
            if node in nodes:
                node.meta["val"] = evaluate(node)


def has_unbacked(val: Any) -> bool:
    """True when a value's sizes hold data-dependent symbols (re-evaluation would mint new ones)."""
    return bool(free_unbacked_symbols(val))


def known_equal(a: Any, b: Any) -> bool:
    """Sizes (ints or SymInts) that are provably equal, without adding guards."""
    return statically_known_true(sym_eq(a, b))


def same_meta(a: Any, b: Any, *, layout: bool = False) -> bool:
    """Same structure and dtypes and provably equal shapes (with `layout`, also strides, device and layout),
    or provably equal scalars."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.dim() == b.dim() and known_equal(tuple(a.shape), tuple(b.shape))
                and (not layout or (a.device == b.device and a.layout == b.layout
                                    and known_equal(tuple(a.stride()), tuple(b.stride())))))
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        return (isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b)
                and all(same_meta(x, y, layout=layout) for x, y in zip(a, b)))
    if isinstance(a, _SCALARS) and isinstance(b, _SCALARS):
        return known_equal(a, b)
    return type(a) is type(b)

"""The float64 oracle: the model (or, where it cannot, its captured graph) run in float64 beside float32.

A float32 runtime is right when it is as close to the exact answer as float32 eager PyTorch is. float64 stands
in for the exact answer: its own rounding error is ~1e-16 relative, nine orders below float32's. So every check
runs the reference twice, in float32 (what the user's model computes) and in float64 (what it means), and the
judge (compiler.compare) lets a target's error against float64 grow with eager float32's own error there.

First choice: the model as written, its float32 parameters, buffers and inputs cast to float64. Where that
raises, or leaves an output in float32 (a model that casts inside), the captured graph is run by a torch.fx
Interpreter with every float32 dtype argument (casts, factories, metadata asserts) turned into float64. Where
neither runs, there is no oracle and the judge falls back to the tolerance policy; `note` says why.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Sequence

import torch
import torch.utils._pytree as pytree

from crossgraph.graphs import FunctionalModel, Graph
from crossgraph.graphs.functional import map_tree
from crossgraph.passes import program


@dataclasses.dataclass
class Oracle:
    """float64 outputs of one input set, leaf by leaf (None where a leaf has no float64 value), and how they
    were computed: "model" (the model as written), "graph" (the captured graph) or "none", with a note."""

    outputs: list[torch.Tensor | None]
    source: str
    note: str | None = None


def widen(value: Any) -> Any:
    """float32 tensors (and complex64) in any pytree as float64 (complex128); everything else as it is."""
    def one(x: Any) -> Any:
        if isinstance(x, torch.Tensor) and x.dtype in _WIDER:
            return x.detach().to(_WIDER[x.dtype])
        if isinstance(x, torch.dtype):
            return _WIDER.get(x, x)
        return x
    return pytree.tree_map(one, value)


_WIDER = {torch.float32: torch.float64, torch.complex64: torch.complex128}


class ModelOracle:
    """Runs one model in float64 on any number of input sets: the widened model is built once, on first use."""

    def __init__(self, model: Any, graph: Graph) -> None:
        self.model, self.graph = model, graph
        self._wide: Any = None
        self._model_error: str | None = None

    def __call__(self, inputs: Sequence[torch.Tensor], reference: Sequence[Any]) -> Oracle:
        """float64 outputs for `inputs`; `reference` (the outputs' leaves, torch or numpy) says which leaves
        need one: the float32 and complex64 ones."""
        wanted = [str(getattr(r, "dtype", "")).removeprefix("torch.") in ("float32", "complex64") for r in reference]
        if not any(wanted):
            return Oracle([None] * len(reference), "none", "no float32 output to judge against float64")
        model_note = None
        try:
            leaves = self._run_model(inputs)
            if _complete(leaves, wanted):
                return Oracle(_pick(leaves, wanted), "model")
            model_note = "the model keeps some outputs in float32 when run in float64"
        except Exception as exc:  # a model that cannot run in float64 is common (dtype asserts, casts): fall back
            model_note = f"the model raised in float64 ({type(exc).__name__}: {_first_line(exc)})"
        try:
            leaves = graph_outputs(self.graph, inputs)
        except Exception as exc:
            return Oracle([None] * len(reference), "none",
                          f"{model_note}, and so did the captured graph ({type(exc).__name__}: {_first_line(exc)})")
        if len(leaves) == len(reference):
            picked = _pick(leaves, wanted)
            missing = sum(w and p is None for w, p in zip(wanted, picked))
            note = f"{model_note}: the captured graph ran in float64 instead"
            return Oracle(picked, "graph", note + (f"; {missing} output(s) stay float32" if missing else ""))
        return Oracle([None] * len(reference), "none", f"{model_note}, and the captured graph's outputs differ")

    def _run_model(self, inputs: Sequence[torch.Tensor]) -> list[Any]:
        if self._model_error:
            raise RuntimeError(self._model_error)
        if self._wide is None:
            self._wide = widen_model(self.model)
        with torch.no_grad():
            out = self.graph.call(self._wide, widen(tuple(inputs)))
        return pytree.tree_leaves(out)


def widen_model(model: Any) -> Any:
    """A float64 copy of `model` (a FunctionalModel or an nn.Module): float32 parameters and buffers widened,
    the original untouched. Anything else (a graph, a callable) raises TypeError: the graph path serves it."""
    if isinstance(model, FunctionalModel):
        return dataclasses.replace(model, params=map_tree(widen, model.params))
    if isinstance(model, torch.nn.Module):
        wide = copy.deepcopy(model)
        for tensor in (*wide.parameters(), *wide.buffers()):
            if tensor.dtype in _WIDER:
                tensor.data = tensor.data.to(_WIDER[tensor.dtype])
        return wide
    raise TypeError(f"cannot widen a {type(model).__name__}")


def widened_module(graph: Graph) -> torch.fx.GraphModule:
    """A copy of the graph's module in which every float32 dtype argument is float64."""
    module = copy.deepcopy(graph.exported.graph_module)
    for node in module.graph.nodes:
        if node.op == "call_function":
            node.args, node.kwargs = widen(node.args), widen(node.kwargs)
    module.recompile()
    return module


def graph_values(graph: Graph, inputs: Sequence[torch.Tensor]) -> dict[str, Any]:
    """Every node's float64 value by node name: the widened graph run by a torch.fx Interpreter, its float32
    state and inputs widened (what the localizer compares intermediates with)."""
    interpreter = torch.fx.Interpreter(widened_module(graph), garbage_collect_values=False)
    with torch.no_grad():
        interpreter.run(*widen(program.call_args(graph, inputs)))
    return {node.name: value for node, value in interpreter.env.items()}


def graph_outputs(graph: Graph, inputs: Sequence[torch.Tensor]) -> list[Any]:
    """The graph's user outputs in float64 (as leaves, in the order the graph returns them)."""
    with torch.no_grad():
        out = widened_module(graph)(*widen(program.call_args(graph, inputs)))
    mutated = sum(1 for s in graph.exported.graph_signature.output_specs if s.kind.name != "USER_OUTPUT")
    return pytree.tree_leaves(tuple(out)[mutated:])


def _complete(leaves: list[Any], wanted: list[bool]) -> bool:
    return len(leaves) == len(wanted) and all(
        not w or (isinstance(x, torch.Tensor) and x.dtype in _WIDER.values()) for x, w in zip(leaves, wanted))


def _pick(leaves: list[Any], wanted: list[bool]) -> list[torch.Tensor | None]:
    return [x if w and isinstance(x, torch.Tensor) and x.dtype in _WIDER.values() else None
            for x, w in zip(leaves, wanted)]


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


__all__ = ["ModelOracle", "Oracle", "graph_outputs", "graph_values", "widen", "widen_model", "widened_module"]

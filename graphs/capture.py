"""capture(): torch.export a module or functional model, lower it to core ATen, record provenance.

Attention stays one op (`aten.scaled_dot_product_attention`): every target has a fused kernel for it, and
torch 2.13's decomposition of it produces strides that break later views in Hugging Face models.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import io
import logging
import sys
from typing import Any, Iterator, Mapping, Sequence

import torch
import torch.fx.proxy
from torch import nn

from crossgraph.graphs import annotations, bounds, decompositions
from crossgraph.graphs.errors import CaptureError, InputError
from crossgraph.graphs.functional import FunctionalModel, FunctionalModule
from crossgraph.graphs.graph import Graph
from crossgraph.graphs.provenance import from_node_meta, python_frame_of

KEPT_OPS = (torch.ops.aten.scaled_dot_product_attention.default,)


def decomposition_table() -> dict[Any, Any]:
    """torch's core-ATen decompositions minus the ops crossgraph keeps whole (see KEPT_OPS)."""
    table = torch.export.default_decompositions()
    for op in KEPT_OPS:
        table.pop(op, None)
    table.update(decompositions.table())  # grouped matmuls of MoE layers, loop-free: graphs/decompositions.py
    return table


def capture(model: nn.Module | FunctionalModel, example_inputs: Any = (),
            dynamic_shapes: Sequence[Any] | Mapping[str, Any] | None = None, *, name: str | None = None,
            kwargs: Mapping[str, torch.Tensor | None] | None = None) -> Graph:
    """Export `model` called as `model(*example_inputs, **kwargs)` into a core-ATen Graph.

    `example_inputs` is a tensor or a tuple of tensors; `kwargs` maps input names to tensors, None meaning "not
    passed" (as torch.export's `kwargs`). The Graph takes every tensor input positionally, the positional ones
    first, then the keyword ones in `kwargs`' order, each named by its argument name (`Graph.input_names`,
    `Graph.keyword_inputs`). `dynamic_shapes` follows torch.export: one entry per input (a {dim: Dim} dict or
    None), as a sequence in that order or a mapping by input name. Failures raise CaptureError naming the
    construct, the user's line and the fix.
    """
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    bad = [i for i, t in enumerate(inputs) if not isinstance(t, torch.Tensor)]
    if bad:
        raise InputError(f"example input {bad[0]} is a {type(inputs[bad[0]]).__name__}; inputs must be tensors")
    keyword = keyword_tensors(kwargs)
    module, input_names, constants, label = _as_module(model, len(inputs))
    taken = set(input_names) & set(keyword)
    if taken:
        raise InputError(f"input {sorted(taken)[0]!r} is given both positionally and as a keyword")
    input_names += list(keyword)
    ds = _dynamic_shapes(dynamic_shapes, input_names, {**keyword, **constants},
                         functional=isinstance(model, FunctionalModel), positional=len(inputs))
    with _quiet_torch_logs():
        try:
            exported = torch.export.export(module, inputs, kwargs={**keyword, **constants}, dynamic_shapes=ds,
                                           strict=False)
            exported = exported.run_decompositions(decomposition_table())
        except InputError:
            raise
        except Exception as exc:  # torch.export raises many unrelated types; each is classified below
            raise _capture_error(label, exc) from exc
    for node in exported.graph.nodes:
        prov = from_node_meta(node.meta)
        if prov is not None:
            annotations.put(node, prov)
    graph = Graph(exported, name=name or label, input_names=input_names, constant_kwargs=constants)
    if dynamic_shapes is not None:  # ranges up to the model's own limits (position tables): graphs/bounds.py
        bounds.bound(graph)
    return graph


def input_names(model: nn.Module | FunctionalModel, n_inputs: int,
                kwargs: Mapping[str, torch.Tensor | None] | None = None) -> list[str]:
    """The names `capture` gives the tensor inputs of `model(*n_inputs tensors, **kwargs)`, in its order."""
    return _as_module(model, n_inputs)[1] + list(keyword_tensors(kwargs))


def keyword_tensors(kwargs: Mapping[str, Any] | None) -> dict[str, torch.Tensor]:
    """The keyword inputs that are passed: None values dropped (None means "not passed"); a key that is not a
    string or a value that is not a tensor is an InputError saying what to give instead."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping):
        raise InputError(f"keyword inputs must be a dict from input name to tensor or None, got "
                         f"{type(kwargs).__name__}")
    out = {}
    for key, value in kwargs.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise InputError(f"keyword input names must be argument names (strings), got {key!r}")
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            raise InputError(f"keyword input {key!r} is a {type(value).__name__}; give a tensor, or None for "
                             "\"not passed\"")
        out[key] = value
    return out


def _as_module(model: Any, n_inputs: int) -> tuple[nn.Module, list[str], dict[str, Any], str]:
    """The nn.Module to export, the user-input names, constant kwargs and a label for messages."""
    if isinstance(model, FunctionalModel):
        _anchor_functions(model.apply)
        params = list(inspect.signature(model.apply).parameters.values())[1:]
        named = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        names = named[:n_inputs] + [f"input_{i}" for i in range(len(named), n_inputs)]
        return FunctionalModule(model), names, {}, model.name
    if isinstance(model, nn.Module):
        sig = inspect.signature(model.forward).parameters
        positional = [p.name for p in sig.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        names = positional[:n_inputs] + [f"input_{i}" for i in range(len(positional), n_inputs)]
        # Hugging Face models return a cache object torch.export cannot flatten; capture the cache-free forward.
        kwargs = {"use_cache": False} if "use_cache" in sig and hasattr(model, "config") else {}
        return model, names, kwargs, type(model).__name__
    raise InputError(f"cannot capture a {type(model).__name__}: expected an nn.Module or a "
                     "crossgraph FunctionalModel")


def _anchor_functions(apply: Any) -> None:
    """Let torch.export keep stack frames of the functional model's own functions (not only `forward`)."""
    register = getattr(torch.fx.proxy, "_register_stack_trace_anchor", None)
    if register is None:
        return
    while isinstance(apply, functools.partial):
        apply = apply.func
    module = sys.modules.get(getattr(apply, "__module__", ""), None)
    fns = [apply] + ([f for f in vars(module).values() if inspect.isfunction(f) and f.__module__ == module.__name__]
                     if module is not None else [])
    for fn in fns:
        register(fn)


def _dynamic_shapes(spec: Any, names: list[str], kwargs: dict[str, Any], functional: bool,
                    positional: int) -> Any:
    """torch.export's form of the user's dynamic shapes: a tuple per positional input, or, with keyword inputs
    or constant keyword arguments (Hugging Face's use_cache=False), a dict by argument name that names them
    too. `names` are every tensor input's, the first `positional` of them passed positionally."""
    if spec is None:
        return None
    if isinstance(spec, Mapping):
        unknown = sorted(set(spec) - set(names))
        if unknown:
            raise InputError(f"dynamic_shapes names unknown inputs {unknown}; the inputs are {names}")
        spec = [spec.get(n) for n in names]
    spec = list(spec)
    if len(spec) != len(names):
        raise InputError(f"dynamic_shapes has {len(spec)} entries for {len(names)} inputs")
    # A functional model's forward takes *inputs (and **kwargs): torch.export wants them as one tuple (and dict).
    if functional:
        keyword = dict(zip(names[positional:], spec[positional:]))
        return {"inputs": tuple(spec[:positional]), "kwargs": keyword} if keyword else (tuple(spec),)
    return {**dict(zip(names, spec)), **{k: None for k in kwargs if k not in names}} if kwargs else tuple(spec)


_FIXES = {
    "data": ("data-dependent control flow (a Python branch, bool() or .item() on a tensor's value)",
             "branch with torch.cond(pred, true_fn, false_fn, operands), or state what the tracer cannot know "
             "with torch._check(...)"),
    "constraint": ("a dimension marked dynamic was specialized to a constant by the model",
                   "give the Dim a min/max range, use Dim.AUTO, or leave that dimension static"),
    "dynamic_spec": ("dynamic_shapes does not match the inputs",
                     "give one entry per input: a {dim_index: torch.export.Dim(...)} dict, or None"),
    "python": ("a Python construct torch.export cannot trace",
               "keep the computation in torch ops on tensors; move numpy, printing of values and I/O out of "
               "the model"),
}


def _classify(exc: BaseException) -> str:
    text = f"{type(exc).__name__} {exc}"
    if "data-dependent" in text or "DataDependent" in text:
        return "data"
    if "Constraints violated" in text or "ConstraintViolation" in text or "specialized" in text:
        return "constraint"
    if "dynamic_shapes" in text:
        return "dynamic_spec"
    return "python"


def _capture_error(label: str, exc: BaseException) -> CaptureError:
    construct, fix = _FIXES[_classify(exc)]
    frame = python_frame_of(exc)
    where = f"\n  at {frame.filename}:{frame.lineno} in {frame.name}: {(frame.line or '').strip()}" if frame else ""
    first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    return CaptureError(f"cannot capture {label}: {construct}{where}\n  fix: {fix}\n"
                        f"  (torch.export: {type(exc).__name__}: {first})")


@contextlib.contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    """On failure torch.export logs at WARNING and prints the partial graph to stderr; the CaptureError says
    what matters, so both are held back (stderr is passed on when the capture succeeds)."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.ERROR)
    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held):
            yield
    finally:
        logger.setLevel(level)
    sys.stderr.write(held.getvalue())

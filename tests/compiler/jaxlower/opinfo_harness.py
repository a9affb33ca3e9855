"""Run torch OpInfo samples through the jax lowering: trace each with make_fx and crossgraph's core-ATen
decompositions, lower the traced graph, run it under jax.jit and compare with the same graph run by torch."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import operator
import sys
import types
import unittest
from typing import Any, Callable

import jax
import numpy as np
import torch
import torch.utils._pytree as pytree
from torch.fx.experimental.proxy_tensor import make_fx

from crossgraph.compiler import Tolerance, TolerancePolicy
from crossgraph.compiler.jaxlower import NeedsX64Error, to_jax_function
from crossgraph.compiler.subject import to_numpy
from crossgraph.graphs import InputError, UnsupportedOpError
from crossgraph.graphs.capture import decomposition_table
from crossgraph.models.convert import tensor_to_jax

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64}
SAMPLES = 3
"""Samples per (OpInfo, dtype): the first few, which are the small and ordinary ones."""

_INT32 = np.iinfo(np.int32)


def op_db() -> dict[str, Any]:
    """torch's OpInfo database by "name.variant". torch.testing imports `expecttest`, a test-only package this
    environment lacks; a stand-in with its two used names lets the database load (nothing here uses it)."""
    sys.modules.setdefault("expecttest", types.SimpleNamespace(TestCase=unittest.TestCase, ACCEPT=False))
    from torch.testing._internal.common_methods_invocations import op_db as db
    return {f"{info.name}.{info.variant_test_name}" if info.variant_test_name else info.name: info for info in db}


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One sample: "pass", "skip" (with the reason) or "fail" (with the mismatch); `ops` are the traced ops."""

    status: str
    detail: str = ""
    ops: frozenset[str] = frozenset()


def _call(info: Any, leaves: list[Any], spec: Any, positions: list[int]) -> Any:
    def fn(*tensors: torch.Tensor) -> list[Any]:
        filled = list(leaves)
        for i, t in zip(positions, tensors):
            filled[i] = t
        arg, args, kwargs = pytree.tree_unflatten(filled, spec)
        return pytree.tree_leaves(info.op(arg, *args, **kwargs))
    return fn


MODES = ("core", "aten")
"""How samples are traced: "core" with crossgraph's core-ATen decompositions (what capture produces), "aten" with
none beyond torch's own (so the ops those decompositions remove, like upsample_bilinear2d, are reached too)."""


@functools.lru_cache(maxsize=1)
def _decompositions() -> dict[Any, Any]:
    return decomposition_table()


def trace(info: Any, sample: Any, mode: str = "core") -> tuple[torch.fx.GraphModule, list[torch.Tensor]]:
    """The sample's call as a GraphModule (traced in `mode`) whose inputs are the sample's tensors."""
    leaves, spec = pytree.tree_flatten((sample.input, sample.args, sample.kwargs))
    positions = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
    tensors = [leaves[i] for i in positions]
    table = _decompositions() if mode == "core" else {}
    module = make_fx(_call(info, leaves, spec, positions), decomposition_table=table)(*[t.clone() for t in tensors])
    return module, tensors


def tolerance(dtype: np.dtype, override: Tolerance | None) -> Tolerance:
    """The jax target's tolerance for `dtype` (complex64 as float32), unless an OpInfo rule overrides it."""
    return override or TolerancePolicy().for_output("jax", "float32" if dtype == np.complex64 else dtype)


def _mismatch(name: str, ref: np.ndarray, out: np.ndarray, tol: Tolerance, values: bool) -> str | None:
    if ref.shape != out.shape:
        return f"output {name}: shape {out.shape} != {ref.shape}"
    want = ref.dtype if ref.dtype != np.int64 else np.dtype(np.int32)
    if out.dtype != want:
        return f"output {name}: dtype {out.dtype} != {want}"
    if not values or not ref.size:
        return None
    wide = np.complex128 if np.iscomplexobj(ref) else np.float64
    r, c = ref.astype(wide), out.astype(wide)
    same = (np.isnan(r) & np.isnan(c)) | (r == c) | (np.abs(c - r) <= tol.atol + tol.rtol * np.abs(r))
    if same.all():
        return None
    worst = tuple(int(i) for i in np.argwhere(~same)[0])
    return (f"output {name}: {int((~same).sum())} of {same.size} differ beyond atol={tol.atol} rtol={tol.rtol}; "
            f"first at {worst}: {c[worst]!r} vs torch {r[worst]!r}")


@dataclasses.dataclass(frozen=True)
class Rule:
    """How one OpInfo's outputs are compared: `values` False compares shapes and dtypes only (unspecified
    contents); `tie_outputs` are index outputs compared only when the inputs hold no repeated value (torch picks
    among equal values as its kernel happens to); `tolerance` overrides the per-dtype default."""

    values: bool = True
    tie_outputs: tuple[int, ...] = ()
    tolerance: Tolerance | None = None
    reason: str = ""


_UNSPECIFIED = Rule(values=False, reason="torch leaves the contents unspecified")
RULES: dict[str, Rule] = {
    **dict.fromkeys(("empty", "empty_like", "new_empty", "new_empty_strided", "empty_strided", "empty_permuted"),
                    _UNSPECIFIED),
    **{name: Rule(tie_outputs=(1,), reason="among equal values, torch returns whichever index its kernel meets")
       for name in ("sort", "topk", "kthvalue", "median", "nanmedian", "mode", "msort")},
    "argsort": Rule(tie_outputs=(0,), reason="among equal values, torch returns whichever index its kernel meets"),
}
"""Comparison rules by OpInfo name; every other OpInfo compares all outputs at the per-dtype tolerance."""

_LOW = (torch.float16, torch.bfloat16)


def _float32_reference(info: Any, sample: Any) -> list[np.ndarray]:
    """The sample run by torch with float16/bfloat16 tensors in float32, rounded back to their dtypes."""
    leaves, spec = pytree.tree_flatten((sample.input, sample.args, sample.kwargs))
    wide = [leaf.float() if isinstance(leaf, torch.Tensor) and leaf.dtype in _LOW else leaf for leaf in leaves]
    arg, args, kwargs = pytree.tree_unflatten(wide, spec)
    low = next(leaf.dtype for leaf in leaves if isinstance(leaf, torch.Tensor) and leaf.dtype in _LOW)
    with torch.no_grad():
        outs = pytree.tree_leaves(info.op(arg, *args, **kwargs))
    return [to_numpy(o.to(low) if o.dtype == torch.float32 else o) for o in outs]


def _has_ties(tensors: list[torch.Tensor]) -> bool:
    return any(t.numel() != torch.unique(t).numel() for t in tensors if t.numel())


def _compare(refs: list[np.ndarray], outs: list[np.ndarray], rule: Rule, skip_values: tuple[int, ...]) -> str | None:
    if len(outs) != len(refs):
        return f"{len(outs)} outputs, torch has {len(refs)}"
    for i, (ref, out) in enumerate(zip(refs, outs)):
        problem = _mismatch(str(i), ref, out, tolerance(ref.dtype, rule.tolerance),
                            rule.values and i not in skip_values)
        if problem:
            return problem
    return None


def check_sample(info: Any, sample: Any, rule: Rule = Rule(), mode: str = "core") -> Outcome:
    """Trace one OpInfo sample in `mode` and check it (see `check_traced`); one torch cannot trace is skipped."""
    try:
        module, tensors = trace(info, sample, mode)
    except Exception as exc:  # the sample cannot be traced by torch itself (data-dependent ops and the like)
        return Outcome("skip", f"make_fx cannot trace it ({type(exc).__name__})")
    return check_traced(module, tensors, rule, lambda: _float32_reference(info, sample))


def check_traced(module: torch.fx.GraphModule, tensors: list[torch.Tensor], rule: Rule = Rule(),
                 float32_reference: Callable[[], list[np.ndarray]] | None = None) -> Outcome:
    """Lower `module`, run it under jax.jit on `tensors` and compare with torch running it. Skips: ops outside the
    table, values that need 64 bits. A float16/bfloat16 mismatch passes when the lowering matches
    `float32_reference` (torch computing in float32): then torch's low-precision kernel is what rounds
    differently, and the outcome's detail says so."""
    ops = frozenset(str(n.target) for n in module.graph.nodes if n.op == "call_function")
    if any(t.layout != torch.strided for t in tensors):
        return Outcome("skip", "sparse inputs", ops)
    with torch.no_grad():
        refs = pytree.tree_leaves(module(*[t.clone() for t in tensors]))
    if not all(isinstance(r, torch.Tensor) for r in refs):
        return Outcome("skip", "non-tensor outputs", ops)
    if any(t.dtype == torch.complex128 for t in [*tensors, *refs]):
        return Outcome("skip", "needs x64: complex128", ops)
    if any(t.dtype == torch.complex32 for t in [*tensors, *refs]):
        return Outcome("skip", "JAX has no complex32", ops)
    try:
        function = to_jax_function(module)
        arrays = [tensor_to_jax(t) for t in tensors]
    except UnsupportedOpError as exc:
        return Outcome("skip", f"outside the table: {exc.op}", ops)
    except (NeedsX64Error, InputError) as exc:
        return Outcome("skip", f"needs x64: {exc}", ops)
    refs_np = [to_numpy(r.resolve_conj().resolve_neg()) for r in refs]
    if rule.values and any(r.dtype == np.int64 and r.size and (r.min() < _INT32.min or r.max() > _INT32.max)
                           for r in refs_np):
        return Outcome("skip", "needs x64: an int64 result exceeds int32", ops)
    try:
        outs = [np.asarray(o) for o in jax.jit(function.fn)(function.params, *arrays)]
    except UnsupportedOpError as exc:
        return Outcome("skip", f"outside the table: {exc.op}", ops)
    except Exception as exc:  # a translation that fails to trace or run is a lowering bug: report it
        return Outcome("fail", f"jax raised {type(exc).__name__}: {str(exc).splitlines()[0][:300]}", ops)
    skip_values = rule.tie_outputs if _has_ties(tensors) else ()
    problem = _compare(refs_np, outs, rule, skip_values)
    if problem and float32_reference is not None and any(t.dtype in _LOW for t in tensors):
        if _compare(float32_reference(), outs, rule, skip_values) is None:
            return Outcome("pass", f"matches torch in float32; torch's own kernel differs: {problem}", ops)
    return Outcome("fail", problem, ops) if problem else Outcome("pass", "", ops)


def op_module(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None,
              outputs: tuple[int, ...] | None = None) -> tuple[torch.fx.GraphModule, list[torch.Tensor]]:
    """A GraphModule that calls `target` once, its tensor arguments as inputs: for ops no OpInfo sample reaches
    through make_fx. `outputs` picks which results of a multi-output op it returns (all tensors by default)."""
    graph = torch.fx.Graph()
    tensors: list[torch.Tensor] = []

    def place(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            tensors.append(value)
            return graph.placeholder(f"input_{len(tensors)}")
        if isinstance(value, (list, tuple)):
            return type(value)(place(v) for v in value)
        return value

    node = graph.call_function(target, place(args), {k: place(v) for k, v in (kwargs or {}).items()})
    with torch.no_grad():
        result = target(*args, **(kwargs or {}))
    if isinstance(result, torch.Tensor):
        graph.output(node)
    else:
        picked = outputs if outputs is not None else [i for i, r in enumerate(result) if isinstance(r, torch.Tensor)]
        graph.output([graph.call_function(operator.getitem, (node, i)) for i in picked])
    return torch.fx.GraphModule(torch.nn.Module(), graph), tensors


def samples(info: Any, dtype: torch.dtype, count: int = SAMPLES) -> list[Any]:
    """The first `count` samples of `info` in `dtype`, with a fixed seed so their values repeat. The sample
    function is called directly: OpInfo.sample_inputs wraps it in a tracker that inspects the call stack for every
    sample, which costs more than tracing, lowering and running the sample together."""
    torch.manual_seed(0)
    with torch.no_grad():
        return list(itertools.islice(info.sample_inputs_func(info, "cpu", dtype, False), count))

"""Interpret a core-ATen FX graph (a crossgraph Graph or a make_fx GraphModule) as a pure JAX function.

`to_jax_function` checks the whole graph first (every op has a translation, no value needs float64) and raises
UnsupportedOpError naming the op, the target and the source line before anything runs. The function it returns,
`fn(params, *inputs)`, has no Python side effects and no data-dependent control flow, so it runs under `jax.jit`
and exports with symbolic shapes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import torch
import torch.utils._pytree as pytree
from torch.export.graph_signature import ConstantArgument, InputKind, OutputKind

from crossgraph.compiler.jaxlower import registry
from crossgraph.compiler.jaxlower.dtypes import NeedsX64Error, needs_x64
from crossgraph.graphs import Graph, InputError, UnsupportedOpError
from crossgraph.graphs.provenance import from_node_meta
from crossgraph.models.convert import tensor_to_jax

IGNORED_KWARGS = frozenset({"layout", "device", "pin_memory", "memory_format", "non_blocking"})
"""Keyword arguments that only place or lay out torch tensors; JAX arrays have neither."""


@dataclasses.dataclass(frozen=True)
class JaxFunction:
    """A graph as JAX: `fn(params, *inputs)` returns the graph's outputs in order; `params` holds its weights
    (parameters, buffers and lifted constants by name) as jax arrays; `output_dtypes` are the torch dtypes the
    graph declares for its outputs (None where it declares none); `node_values(params, *inputs)` is `fn` returning
    every node's value by name instead of the outputs."""

    fn: Callable[..., list[jax.Array]]
    params: dict[str, jax.Array]
    input_names: list[str]
    output_names: list[str]
    output_dtypes: list[torch.dtype | None]
    node_values: Callable[..., dict[str, Any]]

    def __call__(self, *inputs: jax.Array) -> list[jax.Array]:
        return self.fn(self.params, *inputs)

    def values(self, *inputs: jax.Array) -> dict[str, Any]:
        """Every node's value by node name, computed op by op outside jax.jit (for localizing a divergence)."""
        return self.node_values(self.params, *inputs)


@dataclasses.dataclass(frozen=True)
class _Step:
    """One call_function node, ready to run: its translation and its arguments with nodes still as names."""

    name: str
    target: Any
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    where: str


def to_jax_function(graph: Graph | torch.fx.GraphModule, constraints: dict[str, Any] | None = None) -> JaxFunction:
    """Translate `graph` into a JaxFunction, refusing up front what JAX cannot run. `constraints` maps node names
    to jax shardings: each such node's value is passed through `jax.lax.with_sharding_constraint` as soon as it is
    computed (how a sharding plan reaches XLA's partitioner)."""
    constraints = constraints or {}
    if isinstance(graph, Graph):
        fx, placeholders, params, outputs, names = _from_graph(graph)
        where_of = lambda node: str(graph.provenance(node) or "")  # noqa: E731
    else:
        fx, placeholders, params, outputs, names = _from_module(graph)
        where_of = lambda node: str(from_node_meta(node.meta) or "")  # noqa: E731
    steps = [_plan(node, where_of(node)) for node in fx.nodes if node.op == "call_function"]
    unknown = sorted(set(constraints) - {step.name for step in steps})
    if unknown:
        raise InputError(f"sharding constraints name nodes that are not op calls of the graph: {', '.join(unknown)}")
    for node in fx.nodes:
        _check_widths(node, where_of(node))
    order = [(node.name, node.op, node.target) for node in fx.nodes if node.op in ("placeholder", "get_attr")]

    def values(weights: dict[str, jax.Array], *inputs: jax.Array) -> dict[str, Any]:
        if len(inputs) != len(names[0]):
            raise InputError(f"the graph takes {len(names[0])} inputs ({', '.join(names[0])}), got {len(inputs)}")
        env: dict[str, Any] = {}
        feed = iter(inputs)
        for name, kind, target in order:
            source = placeholders.get(name) if kind == "placeholder" else target
            if isinstance(source, ConstantArgument):  # a constant keyword the model was captured with
                env[name] = source.value
            else:
                env[name] = next(feed) if source is None else weights[source]
        for step in steps:
            env[step.name] = _run(step, env)
            if step.name in constraints:
                env[step.name] = jax.lax.with_sharding_constraint(env[step.name], constraints[step.name])
        return env

    def fn(weights: dict[str, jax.Array], *inputs: jax.Array) -> list[jax.Array]:
        env = values(weights, *inputs)
        return [_load(value, env) for value in outputs]

    dtypes = [getattr(v.meta.get("val"), "dtype", None) if isinstance(v, torch.fx.Node) else None for v in outputs]
    return JaxFunction(fn, params, *names, dtypes, values)


def _from_graph(graph: Graph) -> tuple[torch.fx.Graph, dict[str, str | ConstantArgument | None],
                                       dict[str, jax.Array], list[Any], tuple[list[str], list[str]]]:
    """A Graph's placeholders (weights by name, user inputs as None, constant keywords such as Hugging Face's
    use_cache=False as their ConstantArgument), weights, user outputs and names."""
    exported = graph.exported
    signature = exported.graph_signature
    placeholders: dict[str, str | ConstantArgument | None] = {}
    params: dict[str, jax.Array] = {}
    for spec in signature.input_specs:
        if spec.kind == InputKind.USER_INPUT:
            placeholders[spec.arg.name] = spec.arg if isinstance(spec.arg, ConstantArgument) else None
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
            value = exported.state_dict.get(spec.target)
            value = exported.constants[spec.target] if value is None else value
            placeholders[spec.arg.name] = spec.target
            params[spec.target] = tensor_to_jax(value)
        else:
            raise InputError(f"graph input '{spec.arg.name}' is a {spec.kind.name}, which the jax target cannot take")
    results = graph.fx.output_node().args[0]
    outputs = [value for spec, value in zip(signature.output_specs, results) if spec.kind == OutputKind.USER_OUTPUT]
    return graph.fx, placeholders, params, outputs, (graph.input_names, graph.output_names)


def _from_module(module: torch.fx.GraphModule) -> tuple[torch.fx.Graph, dict[str, str | None],
                                                        dict[str, jax.Array], list[Any], tuple[list[str], list[str]]]:
    """A GraphModule's placeholders (all user inputs), get_attr constants as weights, and flattened outputs."""
    fx = module.graph
    inputs = [n.name for n in fx.nodes if n.op == "placeholder"]
    params = {n.target: tensor_to_jax(_attribute(module, n.target)) for n in fx.nodes if n.op == "get_attr"}
    outputs = pytree.tree_leaves(fx.output_node().args[0])
    return fx, dict.fromkeys(inputs), params, outputs, (inputs, [str(i) for i in range(len(outputs))])


def _attribute(module: torch.nn.Module, target: str) -> torch.Tensor:
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part)
    if not isinstance(value, torch.Tensor):
        raise InputError(f"graph attribute '{target}' is a {type(value).__name__}, not a tensor")
    return value


def _plan(node: torch.fx.Node, where: str) -> _Step:
    """The node's translation and normalized arguments, or UnsupportedOpError naming op, target and source."""
    translation = registry.lookup(node.target)
    if translation is None:
        raise UnsupportedOpError(str(node.target), "jax", where)
    reason = translation.refuse(node) if translation.refuse is not None else None
    if reason:
        raise UnsupportedOpError(f"{node.target} ({reason})", "jax", where)
    args, kwargs = _normalize(node)
    return _Step(node.name, node.target, translation.fn, args, kwargs, where)


def _normalize(node: torch.fx.Node) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Positional schema arguments positionally (defaults filled up to the last one given by name), keyword-only
    ones by keyword, minus the placement keywords JAX ignores."""
    args, kwargs = tuple(node.args), {k: v for k, v in node.kwargs.items() if k not in IGNORED_KWARGS}
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return args, kwargs
    rest = [a for a in schema.arguments if not a.kwarg_only][len(args):]
    given = [i for i, a in enumerate(rest) if a.name in kwargs]
    if given:
        args += tuple(kwargs.pop(a.name) if a.name in kwargs else a.default_value for a in rest[:given[-1] + 1])
    return args, kwargs


def _check_widths(node: torch.fx.Node, where: str) -> None:
    """Refuse a node whose value needs float64 or complex128 while jax_enable_x64 is off."""
    vals = pytree.tree_leaves(node.meta.get("val"))
    wide = [v.dtype for v in vals if isinstance(v, torch.Tensor) and needs_x64(v.dtype)]
    if wide:
        at = f" (produced at {where})" if where else ""
        raise NeedsX64Error(f"node '{node.name}' ({node.target}) computes in {wide[0]}{at}; JAX needs "
                            "jax_enable_x64 for that, which crossgraph leaves off: cast the model to float32")


def _load(value: Any, env: dict[str, Any]) -> Any:
    """An argument with every node replaced by its value in `env`."""
    if isinstance(value, torch.fx.Node):
        return env[value.name]
    if isinstance(value, (list, tuple)):
        return type(value)(_load(v, env) for v in value)
    if isinstance(value, dict):
        return {k: _load(v, env) for k, v in value.items()}
    return value


def _run(step: _Step, env: dict[str, Any]) -> Any:
    try:
        return step.fn(*_load(step.args, env), **_load(step.kwargs, env))
    except registry.Unsupported as exc:
        raise UnsupportedOpError(f"{step.target} ({exc})", "jax", step.where) from exc


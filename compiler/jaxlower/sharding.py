"""A sharded Graph on JAX: its Sharding annotations as NamedShardings, partitioned by XLA (GSPMD/Shardy) under jit.

Weights and user inputs enter `jax.jit` with their placeholders' shardings, outputs leave with theirs (replicated
where a node has none, or only a partial sum), and op nodes decided by a plan or a user (`source` "plan"/"user")
are pinned with `with_sharding_constraint`; `constrain="all"` pins every annotated node, propagated ones too.
Partial sums have no NamedSharding, so a partial node is never pinned: XLA places the reduction. `collectives`
counts what the partitioner inserted, from the compiled HLO, for the forward pass or a training step.
"""

from __future__ import annotations

import collections
import os
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import torch
from jax.sharding import AxisType, NamedSharding, PartitionSpec
from torch.export.graph_signature import ConstantArgument, InputKind, OutputKind

from crossgraph.compiler.jaxlower.artifact import _as_jax, _declared
from crossgraph.compiler.jaxlower.interpreter import to_jax_function
from crossgraph.compiler.training import get_loss
from crossgraph.graphs import Graph, InputError, annotations
from crossgraph.graphs.sharding import Mesh, Sharding, mesh_of

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
# An HLO instruction's opcode, followed by its operand list; the async form counts at its -start, not its -done.
_OPCODE = re.compile(r"\s(" + "|".join(COLLECTIVES) + r")(-start)?\(")
_FLAG_COUNT = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


def ensure_devices(count: int) -> list[jax.Device]:
    """`count` devices of JAX's default backend, asking for that many simulated CPU devices while JAX has not
    started its backends; too few is an InputError saying how to get more."""
    flagged = _FLAG_COUNT.search(os.environ.get("XLA_FLAGS", ""))
    if jax.config.jax_num_cpu_devices < count:
        try:  # never fewer than XLA_FLAGS asked for: this setting overrides that flag
            jax.config.update("jax_num_cpu_devices", max(count, int(flagged.group(1)) if flagged else 0))
        except RuntimeError:  # the backends have started, and their devices are fixed for this process
            pass
    devices = jax.devices()
    if len(devices) < count:
        raise InputError(
            f"the mesh needs {count} devices but JAX has {len(devices)} ({devices[0].platform}), and its device "
            f"count is fixed once JAX has run anything: to simulate them on CPU, start the process with "
            f"JAX_NUM_CPU_DEVICES={count} (or XLA_FLAGS=--xla_force_host_platform_device_count={count}) and, "
            f"on a machine with accelerators, JAX_PLATFORMS=cpu")
    return devices[:count]


def jax_mesh(mesh: Mesh) -> jax.sharding.Mesh:
    """`mesh` as a jax Mesh with the same axis names, order and sizes, in Auto mode (the partitioner decides
    what the annotations leave open)."""
    return jax.make_mesh(mesh.shape, mesh.names, axis_types=(AxisType.Auto,) * len(mesh.axes),
                         devices=ensure_devices(mesh.size))


def named_sharding(sharding: Sharding | None, mesh: jax.sharding.Mesh) -> NamedSharding:
    """The NamedSharding of a Sharding's spec (partial axes dropped: the value is taken reduced); replicated for
    None."""
    spec = sharding.partition_spec() if sharding is not None else ()
    return NamedSharding(mesh, PartitionSpec(*spec))


class ShardedJax:
    """An annotated Graph jitted over a device mesh: runs, differentiates and shows its compiled HLO."""

    def __init__(self, graph: Graph, mesh: Mesh | None = None, *, constrain: str = "plan") -> None:
        """`mesh` defaults to the one the annotations use (they must agree on it); `constrain` is "plan" (pin
        plan and user decisions) or "all" (pin every annotated node)."""
        if constrain not in ("plan", "all"):
            raise InputError(f"constrain must be 'plan' or 'all', got {constrain!r}")
        annotated = _annotated(graph)
        self.graph = graph
        self.mesh = mesh_of(graph, mesh)
        self.jax_mesh = jax_mesh(self.mesh)
        pins = {node.name: named_sharding(s, self.jax_mesh) for node, s in annotated.items()
                if node.op == "call_function" and isinstance(node.meta.get("val"), torch.Tensor) and not s.partial
                and (constrain == "all" or s.source != "propagated")}
        self.function = to_jax_function(graph, pins)
        self.trainable: list[str] = []
        self.param_shardings: dict[str, NamedSharding] = {}
        self.input_shardings: list[NamedSharding] = []
        nodes = {node.name: node for node in graph.fx.nodes}
        for spec in graph.exported.graph_signature.input_specs:
            sharding = named_sharding(annotated.get(nodes[spec.arg.name]), self.jax_mesh)
            if spec.kind == InputKind.USER_INPUT and not isinstance(spec.arg, ConstantArgument):
                self.input_shardings.append(sharding)
            elif spec.kind != InputKind.USER_INPUT:
                self.param_shardings[spec.target] = sharding
                if spec.kind == InputKind.PARAMETER and jnp.issubdtype(self.function.params[spec.target].dtype,
                                                                        jnp.floating):
                    self.trainable.append(spec.target)
        signature, results = graph.exported.graph_signature, graph.fx.output_node().args[0]
        outputs = [v for s, v in zip(signature.output_specs, results) if s.kind == OutputKind.USER_OUTPUT]
        reduced = [annotated.get(v) if isinstance(v, torch.fx.Node) else None for v in outputs]
        self.output_shardings = [named_sharding(s if s is not None and not s.partial else None, self.jax_mesh)
                                 for s in reduced]
        self.params = jax.device_put(self.function.params, self.param_shardings)
        self._forward = jax.jit(self.function.fn, in_shardings=(self.param_shardings, *self.input_shardings),
                                out_shardings=self.output_shardings)
        self._steps: dict[str, Any] = {}

    def run(self, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
        """The graph's outputs on `inputs` (torch tensors or arrays), gathered as numpy arrays."""
        outputs = self._forward(self.params, *self._placed(inputs))
        return [_declared(o, d) for o, d in zip(outputs, self.function.output_dtypes)]

    def grads(self, inputs: Sequence[torch.Tensor], loss: str = "next_token") -> tuple[float, dict[str, np.ndarray]]:
        """The training step's loss (of the graph's first output, see `compiler.training.LOSSES`; or MEAN_SQUARE,
        over every floating output as compiler.dtensor computes it) and its gradient for every floating-point
        parameter, computed with each gradient sharded like its parameter."""
        value, grads = self._step(loss)(*self._split(self.params), *self._placed(inputs))
        return float(value), {k: np.asarray(g) for k, g in grads.items()}

    def hlo(self, inputs: Sequence[torch.Tensor], loss: str | None = None) -> str:
        """The compiled, partitioned HLO text of the forward pass on inputs shaped like `inputs`, or of the
        training step under `loss`."""
        placed = self._placed(inputs)
        if loss is None:
            return self._forward.lower(self.params, *placed).compile().as_text()
        return self._step(loss).lower(*self._split(self.params), *placed).compile().as_text()

    def collectives(self, inputs: Sequence[torch.Tensor], loss: str | None = None) -> collections.Counter[str]:
        """How many collective instructions of each kind (see COLLECTIVES) the compiled program holds."""
        return count_collectives(self.hlo(inputs, loss))

    def _placed(self, inputs: Sequence[torch.Tensor]) -> list[jax.Array]:
        """The user inputs as jax arrays laid out as the graph's input annotations say."""
        if len(inputs) != len(self.input_shardings):
            raise InputError(f"the graph takes {len(self.input_shardings)} inputs, got {len(inputs)}")
        return [jax.device_put(_as_jax(x), s) for x, s in zip(inputs, self.input_shardings)]

    def _step(self, loss: str) -> Any:
        """Jitted (trainable, frozen, *batch) -> (loss, grads), built once per loss."""
        if loss not in self._steps:
            fn, first = self.function.fn, len(self.input_shardings)
            spec = None if loss == MEAN_SQUARE else get_loss(loss)

            def objective(trainable: dict[str, jax.Array], frozen: dict[str, jax.Array], *batch: jax.Array) -> Any:
                outputs = fn({**frozen, **trainable}, *batch[:first])
                if spec is None:  # compiler.dtensor's mean_square: every floating output's mean square, summed
                    return sum(jnp.mean(jnp.square(o)) for o in outputs if jnp.issubdtype(o.dtype, jnp.floating))
                return spec.jax_fn(outputs[0], *batch)

            trainable, frozen = self._split(self.param_shardings)
            self._steps[loss] = jax.jit(jax.value_and_grad(objective),
                                        in_shardings=(trainable, frozen, *self.input_shardings),
                                        out_shardings=(named_sharding(None, self.jax_mesh), trainable))
        return self._steps[loss]

    def _split(self, tree: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """A by-weight-name dict as (trainable parameters, everything else)."""
        return ({k: v for k, v in tree.items() if k in self.trainable},
                {k: v for k, v in tree.items() if k not in self.trainable})


MEAN_SQUARE = "mean_square"
"""The loss of a model whose outputs are not logits: the sum over floating outputs of their mean square."""


def count_collectives(hlo: str) -> collections.Counter[str]:
    """Collective instructions by kind in HLO text; an async pair (-start/-done) counts once."""
    return collections.Counter(match.group(1) for match in _OPCODE.finditer(hlo))


def _annotated(graph: Graph) -> dict[torch.fx.Node, Sharding]:
    """Every node's Sharding, checked against the node's shape (an uneven split is an UnevenShardError)."""
    found = {}
    for node in graph.fx.nodes:
        sharding = annotations.get(node, Sharding)
        if sharding is None:
            continue
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and all(isinstance(d, int) for d in val.shape):
            sharding.local_shape(val.shape, node.name)
        found[node] = sharding
    return found

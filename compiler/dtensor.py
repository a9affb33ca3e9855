"""The torch lowering of a sharded Graph: its program run on DTensors over a gloo CPU process group.

Each Sharding annotation becomes DTensor placements on a `DeviceMesh` of the annotation's `Mesh` (per mesh axis:
`Shard(d)` where the axis splits dimension d, `Partial()` where the value is a partial sum over it, else
`Replicate()`). Weights and user inputs are distributed by their placeholders' annotations (replicated without
one); the exported program's fx graph then runs node by node on DTensors, which pick each op's sharding and insert
the collectives; values annotated by a plan or a user are redistributed to their annotation; outputs and gradients
are gathered whole. `run_sharded` does this in `mesh.size` local processes, `run_local` in this process on plain
tensors through the same code, so the two can be compared for parity.

Crossgraph dialect ops have no DTensor sharding rules: they run as their ATen decompositions (the ones Inductor
uses), in both runs. Where DTensor itself fails (torch 2.13), the runner works around it at that op, each
workaround with the error it avoids: metadata asserts run on the local shard, attention in its math form, lookups
in a vocabulary-split table on the gathered table, and the training loss on the gathered outputs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Partial, Placement, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.experimental import implicit_replication
from torch.export.graph_signature import InputKind, OutputKind
from torch.nn.attention import SDPBackend, sdpa_kernel

from crossgraph.compiler.dialect_decompositions import DECOMPOSITIONS, dialect_nodes
from crossgraph.compiler.launch import launch
from crossgraph.compiler.training import get_loss
from crossgraph.graphs import Graph, InputError, Mesh, Sharding, UnsupportedOpError, annotations, bounds
from crossgraph.graphs.sharding import mesh_of
from crossgraph.passes.program import call_args, placeholders

TARGET = "dtensor"
_CONSTRAINING = ("plan", "user")  # annotation sources that fix a value's layout; propagated ones are DTensor's call
# No sharding rule (torch 2.13); it checks dtype, device and layout, which a shard shares with its whole.
_ASSERT_METADATA = torch.ops.aten._assert_tensor_metadata.default
_EMBEDDING = torch.ops.aten.embedding.default
# The dialect's attention decomposes to scaled_dot_product_attention, whose CPU flash kernel has no DTensor rule
# (torch 2.13: "aten._scaled_dot_product_flash_attention_for_cpu.default does not have a sharding strategy
# registered"); its math form is matmuls and a softmax, which DTensor shards. Both runs use it, to compare alike.
_MATH_ATTENTION = functools.partial(sdpa_kernel, [SDPBackend.MATH])


@dataclasses.dataclass(frozen=True)
class RunResult:
    """One run of a graph: its user outputs (whole tensors); with training, the loss and each parameter's
    gradient (whole) by parameter name."""

    outputs: list[torch.Tensor]
    loss: torch.Tensor | None = None
    grads: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


def _mean_square(outputs: Sequence[torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
    """Sum over the floating-point outputs of the mean of their squares: a loss every output's gradient feeds."""
    return sum(out.square().mean() for out in outputs if out.is_floating_point())


def _next_token(outputs: Sequence[torch.Tensor], *inputs: torch.Tensor) -> torch.Tensor:
    """Language-model cross entropy of the first output (logits [B, T, V]) against the first input shifted."""
    return get_loss("next_token").torch_fn(outputs[0], inputs[0])


LOSSES: dict[str, Callable[..., torch.Tensor]] = {"mean_square": _mean_square, "next_token": _next_token}


def default_loss(graph: Graph) -> str:
    """The loss to train `graph` with (see `choose_loss`): next_token for logits over the token ids' vocabulary,
    else mean_square."""
    return choose_loss(graph)[0]


def choose_loss(graph: Graph) -> tuple[str, str]:
    """The loss that fits `graph`'s outputs, and why, in words: next_token where the first input is token ids
    [B, T] looked up in an embedding table of V rows and the first output is logits [B, T, V] over that
    vocabulary; mean_square otherwise (hidden states [B, T, H] of a base model such as LlamaModel, whose H is no
    vocabulary: cross entropy against token ids would index past it)."""
    inputs = graph.input_nodes()
    outputs = [node for node, spec in zip(graph.fx.output_node().args[0], graph.exported.graph_signature.output_specs)
               if spec.kind == OutputKind.USER_OUTPUT]
    first_in = inputs[0].meta.get("val") if inputs else None
    first_out = getattr(outputs[0], "meta", {}).get("val") if outputs else None
    if not (isinstance(first_in, torch.Tensor) and isinstance(first_out, torch.Tensor) and first_in.ndim == 2
            and not first_in.is_floating_point() and first_out.ndim == 3 and first_out.is_floating_point()
            and tuple(first_out.shape[:2]) == tuple(first_in.shape)):
        return "mean_square", "the outputs are not logits [B, T, V] of token ids [B, T]"
    name = graph.input_names[0]
    table = bounds.input_index_bounds(graph).get(name)
    if table is None:
        return "mean_square", f"input '{name}' indexes no embedding table, so the output is not over a vocabulary"
    if first_out.shape[-1] != table.rows:
        return "mean_square", (f"the output's last dimension {first_out.shape[-1]} is not the vocabulary of "
                               f"'{name}' ({table.rows} rows of {table.table}): hidden states, not logits")
    return "next_token", f"logits over the {table.rows}-token vocabulary of '{name}' ({table.table})"


# ---- annotations -> placements -------------------------------------------------------------------------------
def placements(sharding: Sharding, what: str = "value") -> tuple[Placement, ...]:
    """DTensor placements of `sharding`, one per mesh axis. A dimension split over several axes must name them
    in mesh order (DTensor cuts a dimension major axis first); another order is an InputError naming `what`."""
    names = sharding.mesh.names
    for dim, axes in enumerate(sharding.spec):
        order = [names.index(a) for a in axes]
        if order != sorted(order):
            raise InputError(f"{what}: dimension {dim} is split over mesh axes ({', '.join(axes)}), against the "
                             f"mesh's order ({', '.join(names)}); DTensor splits a dimension over several mesh "
                             "axes major axis first only: list them in mesh order")
    dims = {axis: dim for dim, axes in enumerate(sharding.spec) for axis in axes}
    return tuple(Shard(dims[a]) if a in dims else Partial() if a in sharding.partial else Replicate() for a in names)


def check(graph: Graph) -> Mesh:
    """Refuse, before any process starts, what the DTensor run cannot do; the graph's mesh when all is well:
    dialect ops without an ATen form, plan/user annotations with partial sums (a value can be constrained to
    shards or replicas, not made a partial sum), uneven or misordered splits of weights and inputs."""
    mesh = mesh_of(graph)
    for node in dialect_nodes(graph):
        if node.target not in DECOMPOSITIONS:
            prov = graph.provenance(node)
            raise UnsupportedOpError(str(node.target), TARGET, str(prov) if prov else "")
    for node in graph.fx.nodes:
        sharding = annotations.get(node, Sharding)
        if sharding is None:
            continue
        placements(sharding, node.name)
        if sharding.source in _CONSTRAINING and sharding.partial:
            raise InputError(f"{node.name}: a {sharding.source} sharding cannot make a value a partial sum over "
                             f"({', '.join(sharding.partial)}); only propagation finds partial sums")
        val = node.meta.get("val")
        if node.op == "placeholder" and isinstance(val, torch.Tensor):
            sharding.local_shape(val.shape, node.name)
    return mesh


# ---- one run, in a rank or in this process ---------------------------------------------------------------------
class _Runner(torch.fx.Interpreter):
    """Runs the program's nodes on whatever tensors it is given: dialect ops as their ATen decompositions, and,
    on a mesh, plan/user-annotated values redistributed to their annotation."""

    def __init__(self, module: torch.fx.GraphModule, device_mesh: DeviceMesh | None) -> None:
        super().__init__(module)
        self.device_mesh = device_mesh

    def run_node(self, node: torch.fx.Node) -> Any:
        if node.op == "call_function" and node.target in DECOMPOSITIONS:
            args, kwargs = self.fetch_args_kwargs_from_env(node)
            return DECOMPOSITIONS[node.target](*args, **kwargs)
        if node.op == "call_function" and node.target is _ASSERT_METADATA:
            args, kwargs = self.fetch_args_kwargs_from_env(node)
            return _ASSERT_METADATA(_local(args[0]), *args[1:], **kwargs)
        if node.op == "call_function" and node.target is _EMBEDDING and self.device_mesh is not None:
            args, kwargs = self.fetch_args_kwargs_from_env(node)
            return self.embedding(*args, **kwargs)
        value = super().run_node(node)
        sharding = annotations.get(node, Sharding)
        if (isinstance(value, DTensor) and node.op == "call_function" and sharding is not None
                and sharding.source in _CONSTRAINING):
            return value.redistribute(self.device_mesh, placements(sharding, node.name))
        return value

    def embedding(self, weight: torch.Tensor, indices: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """A lookup in a table whose rows (the vocabulary) are split is done on the whole table, gathered for it.

        DTensor would look up each device's rows and mask the others, a masked partial sum (`_MaskPartial`)
        whose mask has the shape of the indices as they were then; torch 2.13 keeps that mask when it reshapes
        the indices or the result over another mesh axis (the `2d` plan, batch over `data`, vocabulary over
        `model`: "IndexError: The shape of the mask [4, 8] at index 0 does not match the shape of the indexed
        tensor [8, 8, 32] at index 0"), and reducing the partial sum at once breaks the backward pass
        ("Redistribution from one partial type (P(sum)) to another (MaskP(sum, torch.Size([64, 64]), 0)) is
        unsupported")."""
        if isinstance(weight, DTensor) and Shard(0) in weight.placements:
            weight = weight.redistribute(self.device_mesh, [Replicate() if p == Shard(0) else p
                                                            for p in weight.placements])
        return _EMBEDDING(weight, indices, *args, **kwargs)


def _execute(graph: Graph, inputs: Sequence[torch.Tensor], device_mesh: DeviceMesh | None, train: bool,
             loss: str | None) -> RunResult:
    """Run `graph` once on `inputs`: on `device_mesh` with DTensors, or on plain tensors when it is None."""
    args, user, params = [], [], {}
    specs = graph.exported.graph_signature.input_specs
    for node, spec, value in zip(placeholders(graph), specs, call_args(graph, inputs)):
        if isinstance(value, torch.Tensor):
            value = _place(value, annotations.get(node, Sharding), device_mesh)
            if train and spec.kind == InputKind.PARAMETER and value.is_floating_point():
                value = value.detach().requires_grad_()
                params[spec.target] = value
        args.append(value)
        if spec.kind == InputKind.USER_INPUT:
            user.append(value)
    # Plain tensors the program creates (arange, masks, scalars) count as replicated next to DTensors.
    replicate = implicit_replication() if device_mesh is not None else contextlib.nullcontext()
    with torch.set_grad_enabled(train), replicate, _MATH_ATTENTION():
        results = _Runner(graph.exported.graph_module, device_mesh).run(*args)
        outputs = [_whole(out) for out, spec in zip(results, graph.exported.graph_signature.output_specs)
                   if spec.kind == OutputKind.USER_OUTPUT]
        value = None
        # The loss runs on the gathered outputs, alike on every rank: DTensor's nll_loss refuses rows it cannot
        # split evenly ("The intermediate results of nll_loss cannot be evenly sharded, resulting in biased mean
        # result", the `2d` plan on GPT-2).
        if train:
            value = LOSSES[loss or default_loss(graph)](outputs, *map(_whole, user))
            value.backward()
    grads = {name: _whole(p.grad) for name, p in params.items() if p.grad is not None}
    return RunResult([out.detach() for out in outputs], None if value is None else value.detach(), grads)


def _place(tensor: torch.Tensor, sharding: Sharding | None, device_mesh: DeviceMesh | None) -> torch.Tensor:
    """`tensor` laid out on `device_mesh` as `sharding` says (replicated without one); itself without a mesh.
    Every rank holds the whole tensor, so each keeps its own piece: no scatter. Detached: a stored weight may
    carry autograd history (Hugging Face's tied GPT-2 head), which distribute_tensor refuses."""
    if device_mesh is None:
        return tensor
    layout = placements(sharding) if sharding is not None else (Replicate(),) * device_mesh.ndim
    return distribute_tensor(tensor.detach(), device_mesh, layout, src_data_rank=None)


def _whole(value: Any) -> Any:
    """A DTensor gathered whole (differentiably); anything else as it is."""
    return value.full_tensor() if isinstance(value, DTensor) else value


def _local(value: Any) -> Any:
    """This rank's piece of a DTensor; anything else as it is."""
    return value.to_local() if isinstance(value, DTensor) else value


def _rank_main(jobs: Sequence[tuple[str, Mesh, Sequence[torch.Tensor]]], train: bool, loss: str | None
               ) -> list[RunResult] | None:
    """In each launched rank, for each (graph file, mesh, inputs): the device mesh over the first `mesh.size`
    ranks (built by every rank: creating its process groups is collective; one per distinct mesh), then, in
    the ranks it holds, the graph loaded and run. Rank 0's results (rank 0 is in every mesh)."""
    device_meshes, results = {}, []
    for path, mesh, feed in jobs:
        if mesh not in device_meshes:
            device_meshes[mesh] = init_device_mesh("cpu", mesh.shape, mesh_dim_names=mesh.names)
        if dist.get_rank() < mesh.size:
            results.append(_execute(Graph.load(path), feed, device_meshes[mesh], train, loss))
    return results if dist.get_rank() == 0 else None


# ---- public entry points ---------------------------------------------------------------------------------------
def run_local(graph: Graph, inputs: Sequence[torch.Tensor], *, train: bool = False, loss: str | None = None
              ) -> RunResult:
    """`graph` on `inputs` in this process on whole tensors, through the same code as `run_sharded`: the
    reference a sharded run is compared with. `train` adds the loss (`loss`, default `default_loss`) and the
    gradient of every floating-point parameter."""
    _check_loss(loss)
    return _execute(graph, inputs, None, train, loss)


def run_sharded(graph: Graph, inputs: Sequence[torch.Tensor], *, train: bool = False, loss: str | None = None,
                timeout: float = 300.0) -> RunResult:
    """`graph` (carrying Sharding annotations) on `inputs` in `mesh.size` local processes on DTensors; outputs,
    loss and gradients gathered whole. See `run_sharded_many` to run several graphs in one launch."""
    return run_sharded_many([(graph, inputs)], train=train, loss=loss, timeout=timeout)[0]


def run_sharded_many(cases: Sequence[tuple[Graph, Sequence[torch.Tensor]]], *, train: bool = False,
                     loss: str | None = None, timeout: float = 300.0) -> list[RunResult]:
    """Each (graph, inputs) of `cases` run as `run_sharded` does, all in one launch of as many processes as the
    largest mesh has devices (starting processes costs more than running a small graph): a smaller mesh runs
    on the first ranks. Results in the order of `cases`; `timeout` bounds the launch; a rank that fails raises
    `launch.RankError` naming it."""
    _check_loss(loss)
    if not cases:
        return []
    meshes = [check(graph) for graph, _ in cases]
    with tempfile.TemporaryDirectory(prefix="crossgraph-dtensor-") as tmp:
        jobs = []
        for i, ((graph, inputs), mesh) in enumerate(zip(cases, meshes)):
            path = str(Path(tmp) / f"graph-{i}.pt2")
            graph.save(path)
            jobs.append((path, mesh, list(inputs)))
        return launch(_rank_main, max(mesh.size for mesh in meshes), jobs, train, loss, timeout=timeout)[0]


def _check_loss(loss: str | None) -> None:
    if loss is not None and loss not in LOSSES:
        raise InputError(f"unknown loss '{loss}'; known: {', '.join(LOSSES)}")

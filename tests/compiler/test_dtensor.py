"""DTensor lowering: sharded runs over gloo give the unsharded outputs, loss and gradients; the launcher reports a
failing or hung rank by number; annotations DTensor cannot honour are refused before any process starts.

Plans are written by hand here, so these tests depend on no sharding pass: Megatron tensor parallelism over
`model` (column-parallel Q/K/V and MLP-in with their biases, and the vocabulary tables, split on dimension 0;
row-parallel attention-out and MLP-out on dimension 1), data parallelism (inputs' batch over `data`), FSDP (inputs
and every parameter whose dimension 0 divides, over all mesh axes), and 2-d (tensor parallel, then FSDP over
`data` on the first dimension left whole). The models have one layer and sizes that divide over 8 devices.

Cost: every rank starts Python, imports torch, loads each graph, and DTensor plans each op's sharding in Python on
every rank, so on a 2-core machine the bill is processes times per-rank work. All parity cases therefore share ONE
launch of 8 processes (2- and 4-device meshes run on the first ranks), training included (outputs are compared
from the same run).

Tolerance (rtol 1e-4, atol 1e-5): worst errors measured over these cases and `crossgraph shard`'s dp, fsdp, tp and
2d plans on the tiny_parallel GPT-2 and Llama at 2 to 8 devices: 3.9e-7 on outputs, 1.5e-7 on gradients, losses
equal (they are computed on the gathered logits).
"""

from __future__ import annotations

import re
import time
from typing import Callable

import pytest
import torch
import torch.distributed as dist
from torch.distributed.tensor import Partial, Replicate, Shard

from crossgraph import graphs
from crossgraph.compiler import dtensor
from crossgraph.compiler.launch import RankError, launch
from crossgraph.graphs import Graph, InputError, Mesh, Sharding, UnevenShardError, annotations
from crossgraph.models import gpt2, llama, mlp
from crossgraph.passes import PassManager
from crossgraph.passes.program import copy_graph, placeholders

RTOL, ATOL = 1e-4, 1e-5
GPT2 = gpt2.GPT2Config(vocab_size=128, n_positions=64, n_embd=64, n_layer=1, n_head=8)
LLAMA = llama.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                          num_attention_heads=8, num_key_value_heads=8, max_position_embeddings=64)

COLUMN = re.compile(r"(c_attn|mlp\.c_fc|q_proj|k_proj|v_proj|gate_proj|up_proj)\.(weight|bias)$")
ROW = re.compile(r"(attn\.c_proj|mlp\.c_proj|o_proj|down_proj)\.weight$")
VOCAB = re.compile(r"(wte|embed_tokens|lm_head)\.weight$")
Rule = Callable[[str, bool, tuple[int, ...], Mesh], tuple[tuple[str, ...], ...]]


def tensor_parallel(name: str, is_input: bool, shape: tuple[int, ...], mesh: Mesh) -> tuple[tuple[str, ...], ...]:
    """Megatron: column-parallel layers and vocabulary tables split on dimension 0, row-parallel on 1."""
    spec = [()] * len(shape)
    if COLUMN.search(name) or VOCAB.search(name):
        spec[0] = ("model",)
    elif ROW.search(name):
        spec[1] = ("model",)
    return tuple(spec)


def data_parallel(name: str, is_input: bool, shape: tuple[int, ...], mesh: Mesh) -> tuple[tuple[str, ...], ...]:
    return tuple(("data",) if is_input and dim == 0 else () for dim in range(len(shape)))


def fsdp(name: str, is_input: bool, shape: tuple[int, ...], mesh: Mesh) -> tuple[tuple[str, ...], ...]:
    """Dimension 0 over every mesh axis (in mesh order), for inputs and every parameter it divides."""
    spec = [()] * len(shape)
    if shape and shape[0] % mesh.size == 0:
        spec[0] = mesh.names
    return tuple(spec)


def two_d(name: str, is_input: bool, shape: tuple[int, ...], mesh: Mesh) -> tuple[tuple[str, ...], ...]:
    """Inputs' batch over `data`; weights tensor parallel over `model`, then FSDP over `data` on the first
    dimension left whole that it divides (a vocabulary table: rows over `model`, columns over `data`)."""
    if is_input:
        return data_parallel(name, is_input, shape, mesh)
    spec = list(tensor_parallel(name, is_input, shape, mesh))
    free = [dim for dim, extent in enumerate(shape) if not spec[dim] and extent % mesh.axis_size("data") == 0]
    if free:
        spec[free[0]] = ("data",)
    return tuple(spec)


def annotate(graph: Graph, mesh: str, rule: Rule) -> Graph:
    """A copy of `graph` with `rule`'s plan Shardings on its parameters and inputs."""
    out, on = copy_graph(graph), Mesh.parse(mesh)
    for node, spec in zip(placeholders(out), out.exported.graph_signature.input_specs):
        is_input = spec.target is None
        shape = tuple(int(s) for s in node.meta["val"].shape)
        annotations.put(node, Sharding(on, rule(spec.target or node.name, is_input, shape, on), source="plan"))
    return out


@pytest.fixture(scope="module")
def captured() -> dict[str, tuple[Graph, tuple[torch.Tensor, ...]]]:
    """Each model captured, on a batch of 8 (it splits over 8 devices); "gpt2-fused" with crossgraph.attention."""
    out = {}
    for name, model, inputs in [("gpt2", gpt2.model(GPT2), gpt2.example_inputs(GPT2, batch=8)),
                                ("llama", llama.model(LLAMA), llama.example_inputs(LLAMA, batch=8))]:
        out[name] = (graphs.capture(model, inputs), inputs)
    out["gpt2-fused"] = (PassManager(["fuse_attention"]).run(out["gpt2"][0]).graph, out["gpt2"][1])
    return out


CASES = [  # (model, mesh, plan, logits constrained to batch shards by a user annotation)
    ("gpt2", "data=2", data_parallel, False),
    ("llama", "model=2", tensor_parallel, False),
    ("gpt2-fused", "model=2", tensor_parallel, False),
    ("gpt2", "data=4", fsdp, False),
    ("gpt2", "data=2,model=2", two_d, False),
    ("llama", "data=2,model=2", fsdp, True),
    ("gpt2", "model=8", tensor_parallel, False),
    ("llama", "data=8", fsdp, False),
]
IDS = [f"{model}-{mesh}-{plan.__name__}{'-constrained' if constrained else ''}"
       for model, mesh, plan, constrained in CASES]


@pytest.fixture(scope="module")
def sharded(captured: dict) -> dict[str, dtensor.RunResult]:
    """Every case's sharded training step, in one launch; the launch's seconds printed for the record."""
    cases = []
    for model, mesh, plan, constrained in CASES:
        graph = annotate(captured[model][0], mesh, plan)
        if constrained:  # a user constraint on a computed value: redistributed to it
            logits = graph.fx.output_node().args[0][0]
            annotations.put(logits, Sharding(Mesh.parse(mesh), (("data",), (), ()), source="user"))
        cases.append((graph, captured[model][1]))
    start = time.perf_counter()
    results = dtensor.run_sharded_many(cases, train=True)
    print(f"launch of 8 processes, {len(cases)} training steps: {time.perf_counter() - start:.1f} s")
    return dict(zip(IDS, results))


@pytest.mark.parametrize("case", range(len(CASES)), ids=IDS)
def test_sharded_training_step_matches_unsharded(case: int, captured: dict, sharded: dict) -> None:
    graph, inputs = captured[CASES[case][0].removesuffix("-fused")]  # the fused graph's: the unfused one
    ref, got = dtensor.run_local(graph, inputs, train=True), sharded[IDS[case]]
    assert len(got.outputs) == len(ref.outputs) == 1
    torch.testing.assert_close(got.outputs[0], ref.outputs[0], rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(got.loss, ref.loss, rtol=RTOL, atol=ATOL)
    assert set(got.grads) == set(ref.grads) == set(graph.parameters())
    for name, grad in ref.grads.items():
        torch.testing.assert_close(got.grads[name], grad, rtol=RTOL, atol=ATOL, msg=lambda m: f"{name}: {m}")


def test_unsharded_run_is_the_graph_and_its_loss(captured: dict) -> None:
    """run_local, the reference of every comparison, computes what the graph computes, and the loss that
    `default_loss` picks: next-token cross entropy for a language model, else the outputs' mean square."""
    graph, (ids,) = captured["gpt2"]
    result = dtensor.run_local(graph, (ids,), train=True)
    logits = graph(ids)[0]
    torch.testing.assert_close(result.outputs[0], logits)
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, GPT2.vocab_size), ids[:, 1:].reshape(-1))
    assert dtensor.default_loss(graph) == "next_token"
    torch.testing.assert_close(result.loss, expected)
    model, inputs = mlp.tiny()
    graph = graphs.capture(model, inputs)
    assert dtensor.default_loss(graph) == "mean_square"
    result = dtensor.run_local(graph, inputs, train=True)
    torch.testing.assert_close(result.loss, graph(*inputs)[0].square().mean())
    assert set(result.grads) == set(graph.parameters())


def test_placements_follow_the_mesh_axes() -> None:
    mesh = Mesh.parse("data=2,model=4")
    assert dtensor.placements(Sharding(mesh, ((), ("model",)))) == (Replicate(), Shard(1))
    assert dtensor.placements(Sharding(mesh, (("data", "model"), ()))) == (Shard(0), Shard(0))
    assert dtensor.placements(Sharding(mesh, (("data",),), partial=("model",))) == (Shard(0), Partial())
    with pytest.raises(InputError, match=r"w: dimension 0 is split over mesh axes \(model, data\).*mesh order"):
        dtensor.placements(Sharding(mesh, (("model", "data"),)), "w")


def test_what_dtensor_cannot_run_is_refused_before_launch(captured: dict) -> None:
    graph, _ = captured["gpt2"]
    with pytest.raises(InputError, match="carries no Sharding annotations"):
        dtensor.check(graph)
    with pytest.raises(UnevenShardError, match=r"inputs_0: dimension 0 of size 8 does not split evenly"):
        dtensor.check(annotate(graph, "data=3", data_parallel))
    partial = annotate(graph, "data=2", data_parallel)
    annotations.put(placeholders(partial)[0], Sharding(Mesh.parse("data=2"), ((), ()), ("data",), source="plan"))
    with pytest.raises(InputError, match="cannot make a value a partial sum"):
        dtensor.check(partial)
    with pytest.raises(InputError, match="unknown loss 'hinge'"):
        dtensor.run_local(graph, captured["gpt2"][1], train=True, loss="hinge")


def fail_on_rank(rank: int) -> int:
    """A launched task that raises on `rank` while the other ranks wait for it in a collective."""
    if dist.get_rank() == rank:
        raise ValueError(f"failing on purpose on rank {rank}")
    dist.barrier()
    return dist.get_rank()


def test_a_failing_rank_is_named() -> None:
    with pytest.raises(RankError, match=r"^rank 1 of 2 failed: ValueError: failing on purpose on rank 1") as info:
        launch(fail_on_rank, 2, 1, timeout=120)
    assert info.value.rank == 1


def test_a_hung_launch_times_out() -> None:
    start = time.perf_counter()
    with pytest.raises(RankError, match=r"timed out after 3 s with rank\(s\) 0 still running") as info:
        launch(time.sleep, 1, 600, timeout=3)
    assert info.value.rank is None and time.perf_counter() - start < 30

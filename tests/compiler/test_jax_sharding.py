"""The jax target over a device mesh: sharded graphs compute what unsharded ones do (outputs and gradients), the
compiled HLO holds the collectives a placement implies, and meshes JAX cannot hold are refused with what to do.

Placements are put on parameters by hand here (Megatron-LM tensor parallelism: column-parallel first projection,
row-parallel second; data parallelism: the batch dimension), as a sharding plan would put them. JAX has 8
simulated CPU devices in the tests (tests/conftest.py).
"""

from __future__ import annotations

import collections
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from jax.sharding import AxisType, PartitionSpec

from crossgraph.compiler.jaxlower.sharding import ShardedJax, count_collectives, ensure_devices
from crossgraph.graphs import Graph, InputError, annotations, capture
from crossgraph.graphs.sharding import Mesh, Sharding, UnevenShardError
from crossgraph.models import gpt2, llama
from crossgraph.passes.program import copy_graph

COL, ROW = ("model", ()), ((), "model")  # torch Linear weights are [out, in]
MEGATRON = {
    "gpt2": {"mlp.c_fc.weight": COL, "mlp.c_fc.bias": ("model",), "mlp.c_proj.weight": ROW,
             "attn.c_attn.weight": COL, "attn.c_attn.bias": ("model",), "attn.c_proj.weight": ROW},
    "llama": {"mlp.gate_proj.weight": COL, "mlp.up_proj.weight": COL, "mlp.down_proj.weight": ROW,
              "q_proj.weight": COL, "k_proj.weight": COL, "v_proj.weight": COL, "o_proj.weight": ROW},
}
MLP_ONLY = {k: v for k, v in MEGATRON["gpt2"].items() if k.startswith("mlp.")}
# GPT-2 with 8 heads, so that attention splits 8 ways; Llama tiny has 4 heads and 2 key/value heads.
GPT2_8 = gpt2.GPT2Config(vocab_size=128, n_positions=64, n_embd=64, n_layer=2, n_head=8)


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[Graph, tuple[torch.Tensor, ...], np.ndarray]]:
    """Each model's graph, inputs of batch 4, and its logits run eagerly by torch."""
    found = {}
    for name, model, inputs in (("gpt2", gpt2.model(GPT2_8), gpt2.example_inputs(GPT2_8, batch=4)),
                                ("llama", llama.model(llama.LlamaConfig.tiny()),
                                 llama.example_inputs(llama.LlamaConfig.tiny(), batch=4))):
        graph = capture(model, inputs)
        found[name] = (graph, inputs, graph(*inputs)[0].numpy())
    return found


def placed(graph: Graph, mesh: Mesh, rules: dict[str, Any], output: Any = None) -> Graph:
    """A copy of `graph` with plan Shardings on the parameters named ending in a key of `rules`, the batch
    dimension of the user input split over "data" when the mesh has that axis, and `output` on the output."""
    graph = copy_graph(graph)
    nodes = {node.name: node for node in graph.fx.nodes}
    for spec in graph.exported.graph_signature.input_specs:
        node = nodes[spec.arg.name]
        if spec.target is None and "data" in mesh.names:
            annotations.put(node, Sharding(mesh, ("data", ()), source="plan"))
        for suffix, placement in rules.items():
            if spec.target is not None and spec.target.endswith(suffix):
                annotations.put(node, Sharding(mesh, placement, source="plan"))
    if output is not None:
        annotations.put(graph.fx.output_node().args[0][0], Sharding(mesh, output, source="plan"))
    return graph


@pytest.mark.parametrize("name, mesh", [("gpt2", "model=2"), ("gpt2", "data=2,model=2"), ("gpt2", "model=8"),
                                        ("llama", "model=2"), ("llama", "data=2,model=2"),
                                        ("llama", "data=4,model=2")])
def test_megatron_and_data_parallel_outputs_match_eager(models: dict, name: str, mesh: str) -> None:
    graph, inputs, expected = models[name]
    sharded = ShardedJax(placed(graph, Mesh.parse(mesh), MEGATRON[name]))
    assert sharded.jax_mesh.axis_names == Mesh.parse(mesh).names
    np.testing.assert_allclose(sharded.run(inputs)[0], expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name, mesh", [("gpt2", "data=2,model=4"), ("llama", "data=2,model=2")])
def test_sharded_gradients_match_unsharded(models: dict, name: str, mesh: str) -> None:
    graph, inputs, _ = models[name]
    loss, grads = ShardedJax(placed(graph, Mesh.parse(mesh), MEGATRON[name])).grads(inputs)
    reference_loss, reference = ShardedJax(graph, Mesh.parse("one=1")).grads(inputs)
    assert loss == pytest.approx(reference_loss, rel=1e-6)
    assert grads.keys() == reference.keys() == graph.parameters().keys()
    for key in grads:
        np.testing.assert_allclose(grads[key], reference[key], atol=1e-6, err_msg=key)


def test_row_parallel_mlp_all_reduces_once_a_layer_forward_and_twice_in_training(models: dict) -> None:
    graph, inputs, _ = models["gpt2"]
    sharded = ShardedJax(placed(graph, Mesh.parse("model=2"), MLP_ONLY))
    assert sharded.collectives(inputs) == collections.Counter({"all-reduce": GPT2_8.n_layer})
    assert sharded.collectives(inputs, loss="next_token") == collections.Counter({"all-reduce": 2 * GPT2_8.n_layer})


def test_data_parallel_forward_needs_no_collectives_and_training_reduces_gradients(models: dict) -> None:
    graph, inputs, _ = models["llama"]
    mesh = Mesh.parse("data=4")
    sharded = ShardedJax(placed(graph, mesh, {}, output=("data", (), ())))
    assert sharded.collectives(inputs) == collections.Counter()
    assert set(sharded.collectives(inputs, loss="next_token")) == {"all-reduce"}
    # an output without annotation leaves replicated: the logits are gathered
    assert ShardedJax(placed(graph, mesh, {})).collectives(inputs) == collections.Counter({"all-gather": 1})


def test_constrain_all_pins_propagated_annotations_too(models: dict) -> None:
    graph, inputs, expected = models["gpt2"]
    graph = copy_graph(graph)
    hidden = next(n for n in graph.fx.nodes  # the first MLP's hidden activations, [B * T, 4 * n_embd]
                  if n.target == torch.ops.aten.addmm.default and n.meta["val"].shape[-1] == 4 * GPT2_8.n_embd)
    annotations.put(hidden, Sharding(Mesh.parse("model=2"), ((), "model"), source="propagated"))
    assert ShardedJax(graph).collectives(inputs) == collections.Counter()
    pinned = ShardedJax(graph, constrain="all")
    assert pinned.collectives(inputs)
    np.testing.assert_allclose(pinned.run(inputs)[0], expected, atol=1e-5, rtol=1e-5)


def test_refusals_name_what_to_change(models: dict) -> None:
    graph, _, _ = models["gpt2"]
    more = len(jax.devices()) + 1  # the backends have started: the device count is fixed from here on
    with pytest.raises(InputError, match=f"JAX_NUM_CPU_DEVICES={more} "):
        ensure_devices(more)
    with pytest.raises(UnevenShardError, match="does not split evenly over mesh axis model"):
        ShardedJax(placed(graph, Mesh.parse("model=3"), MLP_ONLY))
    with pytest.raises(InputError, match="no Sharding annotations"):
        ShardedJax(graph)
    with pytest.raises(InputError, match="several meshes"):
        ShardedJax(placed(graph, Mesh.parse("model=2"), MLP_ONLY), Mesh.parse("model=4"))
    with pytest.raises(InputError, match="constrain must be"):
        ShardedJax(graph, Mesh.parse("one=1"), constrain="some")


def test_count_collectives_reads_what_xla_cpu_compiles() -> None:
    mesh = jax.make_mesh((4,), ("x",), axis_types=(AxisType.Auto,), devices=ensure_devices(4))
    spec = PartitionSpec("x")
    ops = {"all-reduce": lambda a: jax.lax.psum(a, "x"),
           "all-gather": lambda a: jax.lax.all_gather(a, "x", tiled=True)[:4],
           "reduce-scatter": lambda a: jax.lax.psum_scatter(a, "x", tiled=True).repeat(4, axis=0),
           "all-to-all": lambda a: jax.lax.all_to_all(a, "x", 0, 0, tiled=True),
           "collective-permute": lambda a: jax.lax.ppermute(a, "x", [(i, (i + 1) % 4) for i in range(4)])}
    for kind, op in ops.items():
        fn = jax.jit(jax.shard_map(op, mesh=mesh, in_specs=spec, out_specs=spec))
        assert count_collectives(fn.lower(jnp.ones((16, 4))).compile().as_text()) == {kind: 1}, kind
    # async collectives (XLA GPU's form) count once, at their -start
    async_pair = ("  %all-gather-start = (f32[4]{0}, f32[8]{0}) all-gather-start(f32[4]{0} %p), dimensions={0}\n"
                  "  ROOT %all-gather-done = f32[8]{0} all-gather-done((f32[4]{0}, f32[8]{0}) %all-gather-start)\n")
    assert count_collectives(async_pair) == {"all-gather": 1}

"""Sharding annotations, plans and propagation: what each plan splits, which collectives it implies, memory."""

import pytest
import torch

from crossgraph.graphs import Graph, InputError, Mesh, Sharding, UnevenShardError, annotations, capture
from crossgraph.models import gpt2, hf, llama
from crossgraph.passes.shard_plans import parse_override, roles
from crossgraph.passes.shard_propagation import ShardingReport
from crossgraph.passes.sharding import shard, weight_shardings


def _graph(factory) -> Graph:
    torch.manual_seed(0)
    model, inputs = factory()
    return capture(model, inputs)


@pytest.fixture(scope="module")
def gpt2_graph() -> Graph:
    return _graph(gpt2.tiny_parallel)


@pytest.fixture(scope="module")
def llama_graph() -> Graph:
    return _graph(llama.tiny_parallel)


def test_mesh_parse_and_errors() -> None:
    mesh = Mesh.parse("data=2, model=4")
    assert mesh.names == ("data", "model") and mesh.size == 8 and str(mesh) == "data=2,model=4"
    for bad in ("data", "data=x", "data=2,data=2", "data=0", "1x=2"):
        with pytest.raises(InputError):
            Mesh.parse(bad)


def test_sharding_json_and_local_shape() -> None:
    mesh = Mesh.parse("data=2,model=4")
    sharding = Sharding(mesh, (("data",), (), ("model",)), partial=(), source="plan")
    assert Sharding.from_json(sharding.to_json()) == sharding
    assert sharding.local_shape((4, 3, 8)) == (2, 3, 2)
    assert sharding.partition_spec() == ("data", None, "model")
    with pytest.raises(UnevenShardError, match=r"wte: dimension 2 of size 6 does not split evenly over mesh axis "
                                               r"model \(4\)"):
        sharding.local_shape((4, 3, 6), "wte")
    with pytest.raises(InputError, match="twice"):
        Sharding(mesh, (("data",), ("data",)))


def test_tensor_parallel_plan_is_megatron(gpt2_graph: Graph) -> None:
    sharded, report = shard(gpt2_graph, "tp", Mesh.parse("model=4"))
    specs = weight_shardings(sharded)
    column = [n for n in specs if ".attn.c_attn.weight" in n]
    assert len(column) == 6  # split_qkv: q, k and v of both layers
    for name in column:
        assert specs[name].spec == (("model",), ()), name
    assert specs["h.0.mlp.c_fc.weight"].spec == (("model",), ())
    assert specs["h.0.mlp.c_fc.bias"].spec == (("model",),)
    assert specs["h.0.mlp.c_proj.weight"].spec == ((), ("model",))
    assert specs["h.0.attn.c_proj.weight"].spec == ((), ("model",))
    assert specs["h.0.mlp.c_proj.bias"].spec == ((),)
    assert specs["wte.weight"].spec == (("model",), ())
    assert specs["wpe.weight"].spec == ((), ())  # position table: not looked up by input ids
    # the embedding's partial sums, then attention-out and MLP-down per layer: 1 + 2 * 2, nothing else
    assert report.counts() == {"all-reduce": 5}
    assert not report.gathered_ops
    logits = sharded.fx.output_node().args[0][0]
    assert annotations.get(logits, Sharding).spec == ((), (), ("model",))  # vocabulary-parallel LM head


@pytest.mark.parametrize("factory", [llama.tiny_parallel, hf.gpt2_tiny, hf.llama_tiny],
                         ids=["llama", "hf-gpt2", "hf-llama"])
def test_tensor_parallel_on_other_transformers(factory) -> None:
    _, report = shard(_graph(factory), "tp", Mesh.parse("model=2"))
    assert report.counts() == {"all-reduce": 5}


def test_data_parallel_needs_no_collective_forward(llama_graph: Graph) -> None:
    sharded, report = shard(llama_graph, "dp", Mesh.parse("data=8"))
    assert report.counts() == {}
    assert all(s.is_replicated for s in weight_shardings(sharded).values())
    logits = sharded.fx.output_node().args[0][0]
    assert annotations.get(logits, Sharding).spec[0] == ("data",)
    assert report.weight_bytes == report.unsharded_weight_bytes


def test_fsdp_gathers_each_split_weight_once(llama_graph: Graph) -> None:
    sharded, report = shard(llama_graph, "fsdp", Mesh.parse("data=4"))
    split = [n for n, s in weight_shardings(sharded).items() if not s.is_replicated]
    assert report.counts() == {"all-gather": len(split)}
    assert report.weight_bytes == pytest.approx(report.unsharded_weight_bytes / 4, rel=0.01)


def test_2d_combines_tensor_parallel_and_fsdp(gpt2_graph: Graph) -> None:
    sharded, report = shard(gpt2_graph, "2d", Mesh.parse("data=2,model=4"))
    specs = weight_shardings(sharded)
    assert specs["h.0.mlp.c_fc.weight"].spec == (("model",), ("data",))
    assert specs["h.0.mlp.c_proj.weight"].spec == (("data",), ("model",))
    counts = report.counts()
    assert counts["all-reduce"] == 5
    assert counts["all-gather"] == sum(1 for s in specs.values() if "data" in s.sharded_axes())
    assert report.weight_bytes < report.unsharded_weight_bytes / 4


def test_overrides_and_their_errors(gpt2_graph: Graph) -> None:
    pattern, spec = parse_override("h.*.mlp.c_fc.weight=None,None")
    assert spec == ((), ())
    sharded, report = shard(gpt2_graph, "tp", Mesh.parse("model=2"), {pattern: spec, "h.*.mlp.c_fc.bias": [None]})
    fc = weight_shardings(sharded)["h.1.mlp.c_fc.weight"]
    assert fc.is_replicated and fc.source == "user"
    # MLP-down now reads a whole hidden state: each device slices its half, no all-reduce needed before it
    assert report.counts() == {"all-reduce": 5}
    with pytest.raises(InputError, match="matches no parameter"):
        shard(gpt2_graph, "tp", Mesh.parse("model=2"), {"nothing.*": (None,)})
    with pytest.raises(InputError, match="no model"):
        shard(gpt2_graph, "tp", Mesh.parse("data=2"))
    with pytest.raises(InputError, match="unknown sharding plan"):
        shard(gpt2_graph, "zero", Mesh.parse("data=2"))


def test_uneven_split_names_tensor_dimension_and_axis(gpt2_graph: Graph) -> None:
    with pytest.raises(UnevenShardError, match=r"wte.weight .*dimension 0 of size 128 .* mesh axis model \(3\)"):
        shard(gpt2_graph, "tp", Mesh.parse("model=3"))
    with pytest.raises(UnevenShardError, match=r"input_ids.*dimension 0 of size 8 .* mesh axis data \(16\)"):
        shard(gpt2_graph, "dp", Mesh.parse("data=16"))


def test_roles_follow_the_graph_not_the_layout() -> None:
    """Hugging Face's GPT-2 stores linears as Conv1D [in, out]: the output dimension is found from the graph."""
    graph = _graph(hf.gpt2_tiny)
    found = {r.name: r for r in roles(graph).values()}
    assert found["transformer.h.0.mlp.c_fc.weight"].out_dim == 1
    assert found["transformer.h.0.mlp.c_proj.weight"].row_parallel
    assert found["lm_head.weight"].kind == "embedding"  # the tied table, kept under its LM head's name


def test_shardings_survive_save_and_load(gpt2_graph: Graph, tmp_path) -> None:
    sharded, _ = shard(gpt2_graph, "2d", Mesh.parse("data=2,model=2"))
    path = tmp_path / "sharded.pt2"
    sharded.save(path)
    loaded = Graph.load(path)
    before = {n.name: annotations.get(n, Sharding) for n in sharded.fx.nodes}
    after = {n.name: annotations.get(n, Sharding) for n in loaded.fx.nodes}
    assert {name: after.get(name) for name in before} == before  # (loading adds getitems of unused outputs)
    assert sum(s is not None for s in after.values()) > 50
    assert "[sharding: P(model, data) on data=2,model=2 [plan]]" in loaded.format()


# ---- propagation rules on small graphs ---------------------------------------------------------------------------
def _mlp(module, x):
    return (x @ module.up_proj.T).relu() @ module.down_proj.T + module.bias


@pytest.fixture
def mlp(capture_fn) -> Graph:
    return capture_fn(_mlp, torch.randn(8, 16),
                      weights={"up_proj": torch.randn(32, 16), "down_proj": torch.randn(16, 32),
                               "bias": torch.randn(8, 16)})


def _propagate(graph: Graph, plan: str, mesh: str, **overrides) -> tuple[Graph, ShardingReport]:
    return shard(graph, plan, Mesh.parse(mesh), overrides, prepare=False)


def test_row_parallel_partial_sum_is_all_reduced_once(mlp: Graph) -> None:
    sharded, report = _propagate(mlp, "tp", "model=2")
    assert [(c.kind, c.axes) for c in report.collectives] == [("all-reduce", ("model",))]
    out = sharded.fx.output_node().args[0][0]
    assert annotations.get(out, Sharding).spec == ((), ())


def test_partial_sum_needed_split_is_reduce_scattered(mlp: Graph) -> None:
    """A bias split along its rows (sequence-parallel style) takes the row-parallel sum as a reduce-scatter."""
    _, report = _propagate(mlp, "tp", "model=2", bias=("model", None))
    assert report.counts() == {"reduce-scatter": 1}


def test_split_moved_to_another_dimension_is_an_all_to_all(capture_fn) -> None:
    graph = capture_fn(lambda m, x: m.a + m.b, torch.randn(4), weights={"a": torch.randn(4, 4),
                                                                      "b": torch.randn(4, 4)})
    _, report = _propagate(graph, "tp", "model=2", a=("model", None), b=(None, "model"))
    assert report.counts() == {"all-to-all": 1} and report.collectives[0].tensor.startswith("b")


def test_reshape_keeps_an_outer_split_and_gathers_an_inner_one(capture_fn) -> None:
    def fn(m, x):
        return x.view(8, 4, 4) * 2, x.view(128)
    graph = capture_fn(fn, torch.randn(8, 16))
    sharded, report = _propagate(graph, "dp", "data=2")
    split, flat = sharded.fx.output_node().args[0]
    assert annotations.get(split, Sharding).spec == (("data",), (), ())
    assert annotations.get(flat, Sharding).spec == (("data",),)  # the batch is the outer factor: it stays split
    graph = capture_fn(lambda m, x: x.transpose(0, 1).reshape(128), torch.randn(8, 16))
    _, report = _propagate(graph, "dp", "data=2")
    assert report.counts() == {"all-gather": 1}  # the split dimension is now the inner factor


def test_op_without_a_rule_gathers_its_inputs_and_is_named(capture_fn) -> None:
    graph = capture_fn(lambda m, x: torch.topk(x, 2, dim=1)[0], torch.randn(8, 16))
    _, report = _propagate(graph, "dp", "data=2")
    assert report.counts() == {"all-gather": 1}
    assert report.gathered_ops == ["aten.topk.default"]

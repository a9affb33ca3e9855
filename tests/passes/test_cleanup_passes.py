"""Cleanup passes (noop_removal, cse, constant_folding, dead_code): each fires on a function built for it and on
captured GPT-2, outputs stay equal, and the result still saves, loads and runs (at other sizes when dynamic)."""

import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

from crossgraph.graphs import Graph, capture
from crossgraph.models import gpt2
from crossgraph.passes import CLEANUP, PassManager, fake, resolve
from crossgraph.passes.program import copy_graph

aten = torch.ops.aten


def run(graph: Graph, *names: str) -> Graph:
    """The graph after `names`, verified and checked for parity on the capture's example inputs."""
    return PassManager(names, check_parity=True).run(graph).graph


def run_unchecked(graph: Graph, *names: str) -> Graph:
    """Verified, without parity (for random graphs)."""
    return PassManager(names).run(graph).graph


def ops(graph: Graph, *targets: str) -> list[int]:
    return [graph.op_histogram()[t] for t in targets]


# ---- noop_removal ---------------------------------------------------------------------------------------------
def _noops(m: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.ops.aten.alias(x.view(4, 6).reshape(4, 6).expand(4, 6).permute(0, 1))
    y = y + torch.ops.aten._to_copy(x, dtype=torch.float32) + x.t().clone().t()
    return y + x.t().contiguous().t() + x.to(torch.float64).float(), x.clone()


def test_noop_removal_removes_same_shape_views_and_same_layout_copies(capture_fn) -> None:
    x = torch.randn(4, 6)
    graph = capture_fn(_noops, x)
    out = run(graph, "noop_removal")
    assert ops(graph, "aten.view.default", "aten.expand.default", "aten.alias.default") == [2, 1, 1]
    assert ops(out, "aten.view.default", "aten.expand.default", "aten.alias.default") == [0, 0, 0]
    # kept: the permutes that transpose, the contiguous copy that changes strides, the casts to float64 and back,
    # and the clone that is an output (removing it would return the input itself)
    assert ops(out, "aten.permute.default", "aten.clone.default", "aten._to_copy.default") == [4, 2, 2]
    assert ops(graph, "aten.clone.default", "aten._to_copy.default") == [3, 3]
    assert len(out.fx.nodes) == len(graph.fx.nodes) - 7  # and the identity permute, a cast, a clone
    for got, want in zip(out(x), graph(x)):
        assert torch.equal(got, want)


def test_noop_removal_on_gpt2_drops_the_attention_expands(gpt2_tiny) -> None:
    graph, inputs = gpt2_tiny
    out = run(graph, "noop_removal")
    assert ops(graph, "aten.expand.default") == [8] and ops(out, "aten.expand.default") == [0]
    assert ops(out, "aten.clone.default") == ops(graph, "aten.clone.default")  # needed before the views
    assert torch.equal(out(*inputs)[0], graph(*inputs)[0])


def test_symbolic_sizes_are_equal_only_when_provably_so() -> None:
    mode = FakeTensorMode(shape_env=ShapeEnv())

    def symbolic() -> torch.Tensor:
        context = StatelessSymbolicContext(dynamic_sizes=[DimDynamic.DYNAMIC, DimDynamic.STATIC])
        return mode.from_tensor(torch.ones(5, 3), symbolic_context=context)

    a, b = symbolic(), symbolic()  # both 5 in the example, but two symbols
    assert not fake.same_meta(a, b)
    assert fake.same_meta(a, a.view(a.shape[0], 3), layout=True)
    assert not fake.same_meta(a, a.t().contiguous().t(), layout=True)


# ---- cse ------------------------------------------------------------------------------------------------------
def test_cse_merges_repeats_but_not_random_ops_or_different_literals(capture_fn) -> None:
    x = torch.randn(3, 4)
    graph = capture_fn(lambda m, x: x.sin() + x.sin() + (x * 2) * (x * 2.0) + (x * 2), x)
    out = run(graph, "cse")
    assert ops(graph, "aten.sin.default", "aten.mul.Tensor") == [2, 4]
    assert ops(out, "aten.sin.default", "aten.mul.Tensor") == [1, 3]  # x * 2 and x * 2.0 stay apart
    assert torch.equal(out(x)[0], graph(x)[0])
    noisy = capture_fn(lambda m, x: torch.rand_like(x) + torch.rand_like(x), x)
    assert ops(run_unchecked(noisy, "cse"), "aten.rand_like.default") == [2]


def test_cse_on_gpt2_shares_positions_and_causal_masks(gpt2_tiny) -> None:
    graph, inputs = gpt2_tiny
    out = run(graph, "cse")
    assert ops(graph, "aten.arange.start_step", "aten.full.default") == [5, 2]
    assert ops(out, "aten.arange.start_step", "aten.full.default") == [1, 1]
    assert torch.equal(out(*inputs)[0], graph(*inputs)[0])


# ---- constant_folding -----------------------------------------------------------------------------------------
def _weights(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return x @ m.w.t() + m.w.to(torch.float16).to(torch.float32).sum(1) + x.t().sum(0).unsqueeze(1)


def test_constant_folding_precomputes_weight_only_values(capture_fn) -> None:
    x, w = torch.randn(6, 4), torch.randn(6, 4)
    graph = capture_fn(_weights, x, weights={"w": w})
    out = run(graph, "constant_folding")
    checked = ("aten.permute.default", "aten._to_copy.default", "aten.sum.dim_IntList",
               "aten._assert_tensor_metadata.default")
    assert ops(graph, *checked) == [2, 2, 2, 2]
    assert ops(out, *checked) == [1, 0, 1, 0]  # x.t() and its sum stay; the casts' dtype checks ran once
    folded = out.exported.constants
    assert len(folded) == 2 and any(torch.equal(t, w.t()) for t in folded.values())
    assert all(t.is_contiguous() for t in folded.values())
    assert out.parameters().keys() == {"w"}  # the weight itself stays; dead_code drops it
    torch.testing.assert_close(out(x)[0], graph(x)[0])
    cleaned = run(out, "dead_code")
    assert cleaned.parameters() == {} and len(cleaned.fx.nodes) < len(out.fx.nodes)
    torch.testing.assert_close(cleaned(x)[0], graph(x)[0])


def test_constant_folding_leaves_mutated_buffers_alone(capture_fn) -> None:
    def count_calls(m: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        m.calls.add_(1)
        return x * m.calls.t()

    graph = capture_fn(count_calls, torch.randn(2, 3), weights={"calls": torch.zeros(3, 1, dtype=torch.int64)})
    out = run_unchecked(graph, "constant_folding", "dead_code")
    assert out.exported.constants == {} and "calls" in out.exported.state_dict
    assert ops(out, "aten.add.Tensor", "aten.permute.default") == [1, 1]


def _stored_bytes(graph: Graph) -> int:
    """Bytes of the weights and constants a file saved from `graph` holds."""
    tensors = [*graph.exported.state_dict.values(), *graph.exported.constants.values()]
    return sum(t.numel() * t.element_size() for t in tensors)


def test_folding_and_dead_code_on_gpt2_store_the_tied_embedding_once(gpt2_tiny) -> None:
    """wte is the embedding table and, transposed, the LM head: the transpose stays a view of it rather than a
    second copy (on GPT-2 small it grew saved files by 147 MiB). The other weights' transposes fold, their weights
    go, and the total does not grow."""
    graph, inputs = gpt2_tiny
    out = run(graph, "constant_folding", "dead_code")
    wte = graph.parameters()["wte.weight"]
    kept = out.parameters()
    assert kept["wte.weight"] is wte  # still the embedding table
    assert "h.0.attn.c_attn.weight" not in kept and "h.0.attn.c_attn.bias" in kept
    assert not any(t.shape == wte.t().shape and torch.equal(t, wte.t()) for t in out.exported.constants.values())
    assert ops(out, "aten.permute.default") == [ops(graph, "aten.permute.default")[0] - 8]  # 4 per layer
    assert _stored_bytes(out) <= _stored_bytes(graph) and _stored_bytes(run(graph, *CLEANUP)) <= _stored_bytes(graph)
    torch.testing.assert_close(out(*inputs)[0], graph(*inputs)[0])


def _tied(m: torch.nn.Module, ids: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A weight read three ways: looked up, transposed (a second copy if folded), and scaled (computed)."""
    return F.embedding(ids, m.w).sum() + x @ m.w.t() + x @ (m.w * 0.5).t()


def test_constant_folding_folds_computations_on_a_tied_weight_but_not_its_transpose(capture_fn) -> None:
    ids, x, w = torch.tensor([0, 2]), torch.randn(3, 4), torch.randn(5, 4)
    graph = capture_fn(_tied, ids, x, weights={"w": w})
    out = run(graph, "constant_folding", "dead_code")
    (folded,) = out.exported.constants.values()
    assert torch.equal(folded, (w * 0.5).t())
    assert out.parameters().keys() == {"w"} and ops(out, "aten.permute.default") == [1]
    torch.testing.assert_close(out(ids, x)[0], graph(ids, x)[0])


# ---- dead_code ------------------------------------------------------------------------------------------------
def test_dead_code_drops_unused_nodes_and_weights_but_keeps_random_ops(capture_fn) -> None:
    x = torch.randn(2, 3)
    graph = capture_fn(lambda m, x: x * m.w, x, weights={"w": torch.randn(3), "unused": torch.randn(3)})
    assert "unused" in graph.parameters()
    dirty = copy_graph(graph)
    anchor = next(n for n in dirty.fx.nodes if n.target == aten.mul.Tensor)
    with dirty.fx.inserting_after(anchor):
        dead = dirty.fx.call_function(aten.sin.default, (anchor,))
        noise = dirty.fx.call_function(aten.rand_like.default, (anchor,))
    dead.meta["val"] = noise.meta["val"] = anchor.meta["val"]
    out = resolve("dead_code")[0](dirty)
    assert ops(out, "aten.sin.default", "aten.rand_like.default") == [0, 1]
    assert out.parameters().keys() == {"w"}
    assert len(out.fx.nodes) == len(graph.fx.nodes)  # +sin +rand_like added, -sin -unused removed
    torch.testing.assert_close(out(x)[0], graph(x)[0])


# ---- the whole cleanup ----------------------------------------------------------------------------------------
def test_cleaned_gpt2_saves_loads_and_runs(gpt2_tiny, tmp_path: Path) -> None:
    graph, inputs = gpt2_tiny
    out = run(graph, *CLEANUP)
    out.save(tmp_path / "clean.pt2")
    loaded = Graph.load(tmp_path / "clean.pt2")
    assert loaded.exported.constants.keys() == out.exported.constants.keys()
    # torch.export.load adds an unused getitem for every output of a multi-output op (native_layer_norm_unused_1)
    def without_getitems(g: Graph) -> dict[str, int]:
        return {op: n for op, n in g.op_histogram().items() if "getitem" not in op}
    assert without_getitems(loaded) == without_getitems(out) != without_getitems(graph)
    assert torch.equal(loaded(*inputs)[0], out(*inputs)[0])
    torch.testing.assert_close(loaded(*inputs)[0], graph(*inputs)[0])
    softmax = next(n for n in loaded.fx.nodes if n.target == aten._softmax.default)
    assert loaded.provenance(softmax).function == "attention"


def test_dynamic_gpt2_survives_cleanup_and_runs_at_other_sizes(gpt2_dynamic, tmp_path: Path) -> None:
    out = run(gpt2_dynamic, *CLEANUP)
    assert out.dynamic_dims() == gpt2_dynamic.dynamic_dims() != {}
    assert ops(out, "aten.expand.default") == [0]  # symbolic no-ops proven and removed
    assert not any("embedding" in name for name in out.exported.constants)  # positions depend on the length
    assert any("permute" in name for name in out.exported.constants)  # weight transposes fold regardless
    out.save(tmp_path / "dynamic.pt2")
    loaded = Graph.load(tmp_path / "dynamic.pt2")
    config = gpt2.GPT2Config.tiny()
    for batch, seq in [(3, 5), (1, 17)]:
        ids = gpt2.example_inputs(config, batch, seq, seed=seq)[0]
        want = gpt2_dynamic(ids)[0]
        torch.testing.assert_close(out(ids)[0], want)
        torch.testing.assert_close(loaded(ids)[0], want)


@pytest.mark.slow
def test_cleanup_of_a_48_layer_gpt2_shaped_graph_takes_under_5_seconds() -> None:
    config = gpt2.GPT2Config(vocab_size=128, n_positions=64, n_embd=32, n_layer=48, n_head=4)
    graph = capture(gpt2.model(config), gpt2.example_inputs(config))
    start = time.perf_counter()
    result = PassManager(CLEANUP).run(graph)
    seconds = time.perf_counter() - start
    print(f"\ncleanup of {len(graph.fx.nodes)} nodes -> {len(result.graph.fx.nodes)} in {seconds:.2f} s ("
          + ", ".join(f"{r.name} {r.seconds:.2f} + verify {r.verify_seconds:.2f}" for r in result.records) + ")")
    assert len(result.graph.fx.nodes) < len(graph.fx.nodes) and seconds < 5.0

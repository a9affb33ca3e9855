"""split_qkv: GPT-2's fused c_attn (ours [3E, E] read through a transpose, Hugging Face's Conv1D [E, 3E] read
directly) becomes three linears whose weights are the rows (columns) of the fused one, outputs equal; Llama,
already separate, is left alone; after fuse_qkv it gives the original projections back; the result saves, loads
and runs at other sizes of a dynamic capture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crossgraph.graphs import Graph, capture
from crossgraph.models import gpt2, hf
from crossgraph.passes import PassManager

Captured = tuple[Graph, tuple[torch.Tensor, ...]]
SPLIT, LINEARS = "aten.split_with_sizes.default", ("aten.mm.default", "aten.addmm.default")


def run(captured: Captured, *names: str) -> Graph:
    """The graph after `names`, verified after each pass, outputs within 1e-6 of the input graph's."""
    graph, inputs = captured
    return PassManager(names, check_parity=True, sample_inputs=inputs, atol=1e-6, rtol=0).run(graph).graph


def linears(graph: Graph) -> int:
    histogram = graph.op_histogram()
    return sum(histogram[op] for op in LINEARS)


def c_attn(graph: Graph) -> dict[str, torch.Tensor]:
    """The state holding c_attn's weights and biases, by name."""
    state = {**graph.exported.state_dict, **graph.exported.constants}
    return {name: tensor for name, tensor in state.items() if ".c_attn." in name}


def c_attn_linears(graph: Graph) -> list[torch.fx.Node]:
    """The addmm nodes adding a c_attn bias (or a chunk of one)."""
    addmms = graph.fx.find_nodes(op="call_function", target=torch.ops.aten.addmm.default)
    return [node for node in addmms if "c_attn" in node.args[0].name]


@pytest.fixture(scope="module")
def hf_gpt2_tiny() -> Captured:
    torch.manual_seed(0)
    model, inputs = hf.gpt2_tiny()
    return capture(model, inputs), inputs


@pytest.mark.parametrize("name, prefix, out_dim", [("gpt2", "", 0), ("hf_gpt2", "transformer.", 1)])
def test_splits_gpt2_c_attn_into_q_k_v(request: pytest.FixtureRequest, name: str, prefix: str, out_dim: int) -> None:
    """Ours slices rows of [96, 32] (still read through a permute), Hugging Face's columns of [32, 96]."""
    captured = request.getfixturevalue(f"{name}_tiny")
    graph = captured[0]
    out = run(captured, "split_qkv")
    fused, split = c_attn(graph), c_attn(out)
    assert set(split) == {f"{prefix}h.{layer}.attn.c_attn.{kind}_{chunk}"
                          for layer in (0, 1) for kind in ("weight", "bias") for chunk in "qkv"}
    assert set(split) <= set(out.exported.state_dict)  # persistent buffers
    for layer in (0, 1):
        for kind, dim in (("weight", out_dim), ("bias", 0)):
            whole = fused[f"{prefix}h.{layer}.attn.c_attn.{kind}"]
            parts = [split[f"{prefix}h.{layer}.attn.c_attn.{kind}_{chunk}"] for chunk in "qkv"]
            assert all(torch.equal(a, b) for a, b in zip(parts, whole.split(32, dim)))
    assert not [n for n in out.fx.nodes if n.op == "placeholder" and n.name.endswith(("c_attn_weight", "c_attn_bias"))]
    assert out.op_histogram()[SPLIT] == graph.op_histogram()[SPLIT] - 2
    assert linears(out) == linears(graph) + 4
    sources = [{g.provenance(n) for n in c_attn_linears(g)} for g in (graph, out)]
    assert sources[0] == sources[1] and None not in sources[0]  # each chunk's linear: its layer's c_attn line


def test_outputs_are_bit_for_bit_and_the_graph_saves_and_loads(gpt2_tiny: Captured, tmp_path: Path) -> None:
    graph, inputs = gpt2_tiny
    out = run(gpt2_tiny, "split_qkv")
    for ref, got in zip(graph(*inputs), out(*inputs)):
        assert torch.equal(ref, got)
    out.save(tmp_path / "split.pt2")
    loaded = Graph.load(tmp_path / "split.pt2")
    assert set(c_attn(loaded)) == set(c_attn(out))
    for ref, got in zip(out(*inputs), loaded(*inputs)):
        assert torch.equal(ref, got)


def test_dynamic_capture_still_runs_at_other_sizes(gpt2_dynamic: Graph) -> None:
    model, inputs = gpt2.tiny()
    out = run((gpt2_dynamic, inputs), "split_qkv")
    assert len(c_attn(out)) == 12 and out.dynamic_dims() == gpt2_dynamic.dynamic_dims()
    for batch, seq in [(3, 5), (1, 11)]:
        other = gpt2.example_inputs(model.config, batch=batch, seq=seq, seed=seq)
        torch.testing.assert_close(out(*other)[0], gpt2_dynamic(*other)[0], atol=1e-6, rtol=0)


def test_separate_projections_are_left_alone(llama_tiny: Captured) -> None:
    (record,) = PassManager(["split_qkv"]).run(llama_tiny[0]).records
    assert not record.changed


def test_undoes_fuse_qkv(llama_tiny: Captured) -> None:
    """Llama's fused q/k/v and gate/up split again into projections that read the original parameters."""
    graph = llama_tiny[0]
    fused = run(llama_tiny, "fuse_qkv")
    assert linears(fused) == linears(graph) - 6
    out = run((fused, llama_tiny[1]), "split_qkv")
    assert [linears(out), out.op_histogram()[SPLIT]] == [linears(graph), graph.op_histogram()[SPLIT]]
    assert out.exported.state_dict.keys() == graph.exported.state_dict.keys() and not out.exported.constants


def test_unequal_chunks_and_unread_chunks(capture_fn) -> None:
    """split sizes [4, 4, 2] with the middle chunk unread: two linears; chunk [7, 3]: `_0`, `_1`. A split the
    linear's output also escapes from, or one along another dimension, stays."""
    def fn(m: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        q, _, v = torch.nn.functional.linear(x, m.w, m.b).split(4, dim=-1)
        first, second = torch.nn.functional.linear(x, m.u).chunk(2, dim=-1)
        whole = x @ m.u.T
        left, right = whole.split([7, 3], dim=-1)
        rows = (x @ m.u.T).split([1, 4], dim=1)
        return q * 2, v, first, second, left, right, whole, *rows

    weights = {"w": torch.randn(10, 4), "b": torch.randn(10), "u": torch.randn(10, 4)}
    inputs = (torch.randn(2, 5, 4),)
    graph = capture_fn(fn, *inputs, weights=weights)
    out = run((graph, inputs), "split_qkv")
    state = out.exported.state_dict
    assert {name: tuple(t.shape) for name, t in state.items()} == {
        "w_q": (4, 4), "b_q": (4,), "w_v": (2, 4), "b_v": (2,), "u": (10, 4), "u_0": (5, 4), "u_1": (5, 4)}
    assert out.op_histogram()[SPLIT] == 2 and linears(out) == linears(graph) + 2

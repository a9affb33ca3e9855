"""compiler.strategies: drawn inputs the graph accepts, perturbed weights, profiles and deterministic draws."""

import dataclasses

import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from torch import nn

from crossgraph.compiler import strategies as cst
from crossgraph.compiler.export import auto_dynamic_shapes
from crossgraph.graphs import Graph, InputError, capture, unflatten_tree
from crossgraph.models import bert, gpt2, mlp, vit
from crossgraph.passes.program import copy_graph

# What a user's test module does: capture once, at import, and hand the graph to the strategies.
GPT2, EXAMPLE = gpt2.tiny()
GRAPH = capture(GPT2, EXAMPLE, auto_dynamic_shapes(EXAMPLE))
VOCAB = GPT2.config.vocab_size


@given(cst.inputs(GRAPH, EXAMPLE), cst.perturbed_parameters(GRAPH))
@cst.PROFILES["ci"]
def test_user_style_parity_of_eager_graph_and_model(inputs: tuple[torch.Tensor, ...],
                                                     params: dict[str, torch.Tensor]) -> None:
    """The graph on other weights and other inputs computes what the model computes on them."""
    model = dataclasses.replace(GPT2, params=unflatten_tree(params))
    torch.testing.assert_close(cst.with_parameters(GRAPH, params)(*inputs)[0], model(*inputs),
                               rtol=1e-4, atol=1e-5)


def test_gpt2_inputs_have_the_graph_dtypes_and_valid_token_ids() -> None:
    for (ids,) in cst.draw(cst.inputs(GRAPH, EXAMPLE), 8):
        assert ids.dtype == torch.int64 and ids.dim() == 2
        assert 0 <= int(ids.min()) and int(ids.max()) < VOCAB
        (logits,) = GRAPH(ids)
        assert logits.shape == (*ids.shape, VOCAB) and bool(logits.isfinite().all())
    bare = copy_graph(GRAPH)
    bare.exported.example_inputs = None
    assert max(int(ids.max()) for (ids,) in cst.draw(cst.inputs(bare), 8)) >= 16  # the vocab, not [0, 16)


def test_dynamic_dims_vary_within_their_range_clamped_near_the_example() -> None:
    lows = [int(vr.lower) for vr in GRAPH.exported.range_constraints.values()]
    shapes = {tuple(ids.shape) for (ids,) in cst.draw(cst.inputs(GRAPH, EXAMPLE), 20)}
    batches, seqs = {b for b, _ in shapes}, {t for _, t in shapes}
    assert len(batches) > 1 and len(seqs) > 1
    assert min(batches) >= min(lows) and max(batches) <= 2 * EXAMPLE[0].shape[0]
    assert min(seqs) >= min(lows) and max(seqs) <= 2 * EXAMPLE[0].shape[1]


def test_sequence_stays_within_the_position_table() -> None:
    """An example of 200 positions would allow 400; the wpe table has 64 rows, so no more are drawn."""
    long_example = (torch.zeros(1, 200, dtype=torch.int64),)
    seqs = {ids.shape[1] for (ids,) in cst.draw(cst.inputs(GRAPH, long_example), 30)}
    assert GPT2.config.n_positions // 2 < max(seqs) <= GPT2.config.n_positions
    GRAPH(torch.zeros(1, max(seqs), dtype=torch.int64))


def test_shapes_the_program_guards_reject_fall_back_to_the_example() -> None:
    """ViT's patch grid must match its position table (H//4 * W//4 == 16): a guard, not a range constraint.
    Drawn sizes that break it used to reach the model, which raised."""
    model, example = vit.tiny()
    graph = capture(model, example, auto_dynamic_shapes(example))
    drawn = cst.draw(cst.inputs(graph, example), 12, seed=0)
    shapes = {x.shape for (x,) in drawn}
    assert example[0].shape in shapes and len(shapes) > 1  # some valid non-example sizes are drawn too
    for (x,) in drawn:
        assert (x.shape[2] // 4) * (x.shape[3] // 4) == 16
        torch.testing.assert_close(graph(x)[0], model(x))


def test_mlp_floats_are_finite_varied_and_run() -> None:
    model, example = mlp.tiny()
    graph = capture(model, example, mlp.dynamic_shapes(model.config))
    drawn = cst.draw(cst.inputs(graph, example), 30)
    for (x,) in drawn:
        assert x.dtype == torch.float32 and x.shape[1] == 16 and 1 <= x.shape[0] <= 2 * example[0].shape[0]
        assert bool(x.isfinite().all())
        torch.testing.assert_close(graph(x)[0], model(x))
    magnitudes = {round(float(x.abs().max()), 1) for (x,) in drawn}
    assert len(magnitudes) > 5  # several distributions and scales
    assert any(bool((x == 0).any()) and float(x.abs().max()) == 1e4 for (x,) in drawn)  # special values


def test_bert_masks_are_0_1_with_a_kept_token_per_row_and_dims_stay_shared() -> None:
    model, example = bert.tiny()
    graph = capture(model, example, auto_dynamic_shapes(example))
    drawn = cst.draw(cst.inputs(graph, example), 12)
    assert len({ids.shape for ids, _, _ in drawn}) > 1
    for ids, mask, types in drawn:
        assert ids.shape == mask.shape == types.shape
        assert set(mask.unique().tolist()) <= {0, 1} and bool((mask.sum(-1) >= 1).all())
        assert int(ids.max()) < model.config.vocab_size and set(types.unique().tolist()) <= {0, 1}
        torch.testing.assert_close(graph(ids, mask, types)[0], model(ids, mask, types))
    assert any(bool((mask == 0).any()) for _, mask, _ in drawn)  # not all ones


class Lookup(nn.Module):
    """Integer inputs of every kind: table rows by index, columns by index_select, a count, masks."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = nn.Parameter(torch.randn(5, 7))
        self.register_buffer("offset", torch.tensor([3]))

    def forward(self, row: torch.Tensor, col: torch.Tensor, count: torch.Tensor, attention_mask: torch.Tensor,
                keep: torch.Tensor) -> torch.Tensor:
        picked = torch.index_select(self.rows[row.view(-1)], 1, col)
        return picked.sum() * count.sum() + attention_mask.sum() + keep.sum() + self.offset


def _lookup_graph() -> tuple[Lookup, tuple[torch.Tensor, ...], Graph]:
    example = (torch.tensor([0, 1]), torch.tensor([2, 3, 4]), torch.tensor([30, 40]), torch.tensor([[7, 8]]),
               torch.tensor([[True, False]]))
    module = Lookup()
    return module, example, capture(module, example)


def test_integer_bounds_come_from_tables_then_the_example_then_a_default() -> None:
    _, example, graph = _lookup_graph()
    for _, _, count, mask, keep in cst.draw(cst.inputs(graph, example), 20):
        assert 30 <= int(count.min()) and int(count.max()) <= 40
        assert set(mask.unique().tolist()) <= {0, 1} and bool((mask.sum(-1) >= 1).all())  # by its name
        assert keep.dtype == torch.bool and bool(keep.any(-1).all())
    bare = copy_graph(graph)  # no example at all: indices from the tables they index, others in [0, 16)
    bare.exported.example_inputs = None
    drawn = cst.draw(cst.inputs(bare), 20)
    rows, cols, counts = (torch.cat([d[i] for d in drawn]) for i in range(3))
    assert 0 <= int(rows.min()) and int(rows.max()) == 4  # index.Tensor on a 5-row parameter
    assert 0 <= int(cols.min()) and int(cols.max()) == 6  # index_select on its 7 columns
    assert 0 <= int(counts.min()) and 1 < int(counts.max()) < 16
    for inputs in drawn:
        bare(*inputs)


def test_example_inputs_must_match_the_graph_inputs() -> None:
    with pytest.raises(InputError, match="1 graph inputs"):
        cst.inputs(GRAPH, (*EXAMPLE, EXAMPLE[0]))


def test_perturbed_parameters_keep_keys_shapes_dtypes_and_integer_buffers() -> None:
    _, example, graph = _lookup_graph()
    before = {k: v.clone() for k, v in graph.exported.state_dict.items()}
    (params,) = cst.draw(cst.perturbed_parameters(graph, scale=0.1), 1)
    assert params.keys() == before.keys()
    for name, tensor in params.items():
        assert tensor.shape == before[name].shape and tensor.dtype == before[name].dtype
    assert not torch.equal(params["rows"], before["rows"]) and torch.equal(params["offset"], before["offset"])
    changed = cst.with_parameters(graph, params)
    assert not torch.equal(changed(*example)[0], graph(*example)[0])
    for name, tensor in graph.exported.state_dict.items():  # the original graph is untouched
        assert torch.equal(tensor, before[name])


def test_perturbed_gpt2_changes_its_outputs_and_leaves_the_original_alone() -> None:
    reference = GRAPH(*EXAMPLE)[0]
    for params in cst.draw(cst.perturbed_parameters(GRAPH), 3, seed=5):
        moved = cst.with_parameters(GRAPH, params)
        assert not torch.allclose(moved(*EXAMPLE)[0], reference, atol=1e-3)
        assert isinstance(moved.exported.state_dict["wte.weight"], nn.Parameter)
    torch.testing.assert_close(GRAPH(*EXAMPLE)[0], reference, rtol=0, atol=0)


def test_with_parameters_rejects_unknown_names_and_wrong_shapes() -> None:
    with pytest.raises(InputError, match="no parameter.*'nope'"):
        cst.with_parameters(GRAPH, {"nope": torch.zeros(1)})
    with pytest.raises(InputError, match="wte.weight"):
        cst.with_parameters(GRAPH, {"wte.weight": torch.zeros(3, 3)})


def test_draw_is_deterministic_per_seed_and_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    strategy = cst.inputs(GRAPH, EXAMPLE)
    first, again, other = (cst.draw(strategy, 5, seed=s) for s in (7, 7, 8))
    assert len(first) == 5
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))
    assert not all(a[0].shape == b[0].shape and torch.equal(a[0], b[0]) for a, b in zip(first, other))
    assert capsys.readouterr().out == ""


def test_draw_returns_what_a_tiny_space_holds() -> None:
    assert sorted(cst.draw(st.booleans(), 10)) == [False, True]
    assert cst.draw(cst.seeds(), 0) == []


def test_profiles_are_registered_under_a_prefix() -> None:
    cst.register_profiles()
    cst.register_profiles("mine-")
    ci, thorough = settings.get_profile("crossgraph-ci"), settings.get_profile("mine-thorough")
    assert ci.max_examples == 10 and ci.deadline is None and ci.derandomize and ci.database is None
    assert Phase.explain not in ci.phases and Phase.shrink in ci.phases
    assert thorough.max_examples == 200 and thorough.deadline is None

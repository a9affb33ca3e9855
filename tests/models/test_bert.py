"""BERT: the torch functional model and its Flax NNX reference agree; padding never leaks; capture keeps names."""

import dataclasses

import pytest
import torch
from hypothesis import given, strategies as st

from crossgraph.graphs import capture, flatten_tree
from crossgraph.models import bert
from helpers import jitter, torch_vs_flax

Inputs = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@st.composite
def configs(draw: st.DrawFn) -> bert.BertConfig:
    n_head = draw(st.sampled_from([1, 2, 4]))
    return bert.BertConfig(vocab_size=draw(st.integers(8, 64)), hidden_size=n_head * draw(st.sampled_from([4, 8])),
                           num_hidden_layers=draw(st.integers(1, 2)), num_attention_heads=n_head,
                           intermediate_size=draw(st.integers(4, 48)), max_position_embeddings=32,
                           type_vocab_size=draw(st.integers(1, 3)), layer_norm_eps=draw(st.sampled_from([1e-12, 1e-5])))


@st.composite
def paddings(draw: st.DrawFn) -> tuple[int, list[int]]:
    """A sequence length and 1 to 3 rows' real-token counts in 1..seq (a row may be padded or full)."""
    seq = draw(st.integers(1, 32))
    return seq, draw(st.lists(st.integers(1, seq), min_size=1, max_size=3))


def with_lengths(inputs: Inputs, row_lengths: list[int]) -> Inputs:
    """`inputs` re-padded so row i keeps its first row_lengths[i] tokens (ids and types 0 under the padding)."""
    input_ids, _, token_type_ids = inputs
    mask = (torch.arange(input_ids.shape[1])[None, :] < torch.tensor(row_lengths)[:, None]).long()
    return input_ids * mask, mask, token_type_ids * mask


@given(config=configs(), padding=paddings(), seed=st.integers(0, 2**16))
def test_torch_matches_flax(config: bert.BertConfig, padding: tuple[int, list[int]], seed: int) -> None:
    seq, row_lengths = padding
    model = bert.model(config, seed)
    model = dataclasses.replace(model, params=jitter(model.params, seed))
    inputs = bert.example_inputs(config, len(row_lengths), seq, seed)
    verdict = torch_vs_flax(model, with_lengths(inputs, row_lengths))
    assert verdict.ok, verdict.message


def test_example_inputs_are_padded_with_two_segments() -> None:
    config = bert.BertConfig.tiny()
    input_ids, attention_mask, token_type_ids = bert.example_inputs(config, batch=3, seq=16)
    assert all(t.dtype == torch.int64 and t.shape == (3, 16) for t in (input_ids, attention_mask, token_type_ids))
    assert (attention_mask[:, -1] == 0).any()
    assert set(token_type_ids[attention_mask.bool()].tolist()) == {0, 1}
    assert not input_ids[~attention_mask.bool()].any() and not token_type_ids[~attention_mask.bool()].any()
    with pytest.raises(ValueError, match="max_position_embeddings"):
        bert.example_inputs(config, seq=config.max_position_embeddings + 1)


def test_padded_positions_do_not_affect_real_ones() -> None:
    """Changing tokens and types under mask 0 leaves every real position's hidden state unchanged."""
    model, (input_ids, attention_mask, token_type_ids) = bert.tiny()
    pad = ~attention_mask.bool()
    assert pad.any()
    changed_ids = torch.where(pad, (input_ids + 7) % model.config.vocab_size, input_ids)
    changed_types = torch.where(pad, 1, token_type_ids)
    before = model(input_ids, attention_mask, token_type_ids)
    after = model(changed_ids, attention_mask, changed_types)
    torch.testing.assert_close(after[~pad], before[~pad])
    assert not torch.allclose(after[pad], before[pad])


def test_padded_rows_match_unpadded_runs() -> None:
    """Each row of a padded batch equals that row run alone at its own length."""
    model = bert.model(bert.BertConfig.tiny())
    inputs = bert.example_inputs(model.config, batch=3, seq=12, seed=4)
    out = model(*inputs)
    assert out.shape == (3, 12, model.config.hidden_size)
    for row, n in enumerate(inputs[1].sum(dim=1).tolist()):
        alone = model(*(t[row:row + 1, :n] for t in inputs))
        torch.testing.assert_close(alone[0], out[row, :n])


def test_capture_names_parameters_by_tree_path() -> None:
    model, inputs = bert.tiny()
    graph = capture(model, inputs)
    assert set(graph.parameters()) == set(flatten_tree(model.params))
    assert "encoder.layer.1.attention.self.query.weight" in graph.parameters()
    assert graph.input_names == ["input_ids", "attention_mask", "token_type_ids"]


def test_dynamic_capture_runs_at_other_shapes() -> None:
    model, inputs = bert.tiny()
    graph = capture(model, inputs, bert.dynamic_shapes(model.config))
    assert all(set(dims) == {0, 1} for dims in graph.dynamic_dims().values())
    for batch, seq in [(1, 1), (3, 5), (2, 64)]:
        other = bert.example_inputs(model.config, batch, seq, seed=batch * seq)
        torch.testing.assert_close(graph(*other)[0], model(*other))


@pytest.mark.parametrize("bad, match", [
    ({"hidden_size": 30, "num_attention_heads": 4}, "divisible"),
    ({"num_hidden_layers": 0}, "positive"),
    ({"type_vocab_size": 0}, "positive"),
    ({"layer_norm_eps": 0.0}, "layer_norm_eps"),
])
def test_config_rejects_bad_values(bad: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bert.BertConfig(**bad)


@pytest.mark.slow
def test_base_preset_matches_flax() -> None:
    model, inputs = bert.base()
    assert sum(t.numel() for t in flatten_tree(model.params).values()) == 108_891_648
    verdict = torch_vs_flax(model, inputs)
    assert verdict.ok, verdict.message

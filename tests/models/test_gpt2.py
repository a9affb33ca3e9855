"""GPT-2: the torch functional model and its Flax NNX reference agree; capture keeps names and dynamism."""

import dataclasses

import pytest
import torch
from hypothesis import given, strategies as st

from crossgraph.graphs import capture, flatten_tree
from crossgraph.models import gpt2
from helpers import jitter, torch_vs_flax


@st.composite
def configs(draw: st.DrawFn) -> gpt2.GPT2Config:
    n_head = draw(st.sampled_from([1, 2, 4]))
    return gpt2.GPT2Config(vocab_size=draw(st.integers(8, 64)), n_positions=32,
                           n_embd=n_head * draw(st.sampled_from([4, 8])), n_layer=draw(st.integers(1, 2)),
                           n_head=n_head)


@given(config=configs(), batch=st.integers(1, 3), seq=st.integers(1, 32), seed=st.integers(0, 2**16))
def test_torch_matches_flax(config: gpt2.GPT2Config, batch: int, seq: int, seed: int) -> None:
    model = gpt2.model(config, seed)
    model = dataclasses.replace(model, params=jitter(model.params, seed))
    verdict = torch_vs_flax(model, gpt2.example_inputs(config, batch, seq, seed))
    assert verdict.ok, verdict.message


def test_logits_shape_and_tied_head() -> None:
    config = gpt2.GPT2Config.tiny()
    model, (ids,) = gpt2.tiny()
    logits = model(ids)
    assert logits.shape == (*ids.shape, config.vocab_size)
    hidden = gpt2.hidden_states(model.params, ids, config=config)
    torch.testing.assert_close(logits, hidden @ model.params["wte"]["weight"].T)


def test_causal() -> None:
    """Changing a later token never changes earlier logits."""
    model, (ids,) = gpt2.tiny()
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % model.config.vocab_size
    torch.testing.assert_close(model(ids)[:, :-1], model(changed)[:, :-1])
    assert not torch.allclose(model(ids)[:, -1], model(changed)[:, -1])


def test_capture_names_parameters_by_tree_path() -> None:
    model, inputs = gpt2.tiny()
    graph = capture(model, inputs)
    assert set(graph.parameters()) == set(flatten_tree(model.params))
    assert graph.input_names == ["input_ids"]


def test_dynamic_capture_runs_at_other_shapes() -> None:
    model, inputs = gpt2.tiny()
    graph = capture(model, inputs, gpt2.dynamic_shapes(model.config))
    assert set(graph.dynamic_dims()["input_ids"]) == {0, 1}
    for batch, seq in [(1, 1), (3, 5), (1, 64)]:
        ids = gpt2.example_inputs(model.config, batch, seq, seed=batch * seq)[0]
        torch.testing.assert_close(graph(ids)[0], model(ids))


def test_config_rejects_indivisible_heads() -> None:
    with pytest.raises(ValueError, match="divisible"):
        gpt2.GPT2Config(n_embd=30, n_head=4)


@pytest.mark.slow
def test_small_preset_matches_flax() -> None:
    model, inputs = gpt2.small()
    assert sum(t.numel() for t in flatten_tree(model.params).values()) == 124_439_808
    verdict = torch_vs_flax(model, inputs)
    assert verdict.ok, verdict.message

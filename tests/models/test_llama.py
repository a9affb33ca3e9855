"""Llama: the torch functional model and its Flax NNX reference agree, with and without a KV cache; the cache
reproduces the full sequence; capture keeps names and dynamism."""

import dataclasses

import pytest
import torch
from hypothesis import given, strategies as st

from crossgraph.graphs import capture, flatten_tree
from crossgraph.models import llama
from helpers import jitter, torch_vs_flax


@st.composite
def configs(draw: st.DrawFn) -> llama.LlamaConfig:
    kv_heads = draw(st.sampled_from([1, 2]))
    heads = kv_heads * draw(st.sampled_from([1, 2, 4]))
    return llama.LlamaConfig(vocab_size=draw(st.integers(8, 64)), hidden_size=heads * draw(st.sampled_from([4, 8])),
                             intermediate_size=draw(st.integers(4, 48)), num_hidden_layers=draw(st.integers(1, 2)),
                             num_attention_heads=heads, num_key_value_heads=kv_heads,
                             rope_theta=draw(st.sampled_from([10000.0, 500000.0])), max_position_embeddings=32,
                             tie_word_embeddings=draw(st.booleans()))


@given(config=configs(), batch=st.integers(1, 3), seq=st.integers(1, 32), seed=st.integers(0, 2**16))
def test_torch_matches_flax(config: llama.LlamaConfig, batch: int, seq: int, seed: int) -> None:
    model = llama.model(config, seed)
    model = dataclasses.replace(model, params=jitter(model.params, seed))
    verdict = torch_vs_flax(model, llama.example_inputs(config, batch, seq, seed))
    assert verdict.ok, verdict.message


@given(config=configs(), batch=st.integers(1, 2), seq=st.integers(1, 8), past=st.integers(0, 24),
       seed=st.integers(0, 2**16))
def test_cache_form_matches_flax(config: llama.LlamaConfig, batch: int, seq: int, past: int, seed: int) -> None:
    model = llama.model_with_cache(config, seed)
    model = dataclasses.replace(model, params=jitter(model.params, seed))
    verdict = torch_vs_flax(model, llama.example_inputs_with_cache(config, batch, seq, past, seed))
    assert verdict.ok, verdict.message


def test_prompt_then_decode_step_equals_full_sequence() -> None:
    config = llama.LlamaConfig.tiny()
    params = jitter(llama.init(config), seed=1)
    (ids,) = llama.example_inputs(config, batch=2, seq=9)
    full = llama.apply(params, ids, config=config)
    prompt, keys, values = llama.apply_with_cache(params, ids[:, :8], *llama.empty_cache(config, 2), config=config)
    step, keys, values = llama.apply_with_cache(params, ids[:, 8:], keys, values, config=config)
    torch.testing.assert_close(prompt, full[:, :8])
    torch.testing.assert_close(step, full[:, 8:])
    assert keys.shape == values.shape == (2, 2, config.num_key_value_heads, 9, config.head_dim)


@pytest.mark.parametrize("tied", [False, True])
def test_logits_are_the_head_over_hidden_states(tied: bool) -> None:
    config = dataclasses.replace(llama.LlamaConfig.tiny(), tie_word_embeddings=tied)
    model = llama.model(config)
    (ids,) = llama.example_inputs(config)
    logits = model(ids)
    assert logits.shape == (*ids.shape, config.vocab_size)
    assert ("lm_head" in model.params) is not tied
    head = model.params["embed_tokens" if tied else "lm_head"]["weight"]
    torch.testing.assert_close(logits, llama.hidden_states(model.params, ids, config=config) @ head.T)


def test_causal() -> None:
    """Changing a later token never changes earlier logits."""
    model, (ids,) = llama.tiny()
    changed = ids.clone()
    changed[:, -1] = (changed[:, -1] + 1) % model.config.vocab_size
    torch.testing.assert_close(model(ids)[:, :-1], model(changed)[:, :-1])
    assert not torch.allclose(model(ids)[:, -1], model(changed)[:, -1])


def test_capture_names_parameters_by_tree_path() -> None:
    model, inputs = llama.tiny()
    graph = capture(model, inputs)
    assert set(graph.parameters()) == set(flatten_tree(model.params))
    assert "layers.1.self_attn.k_proj.weight" in graph.parameters()
    assert graph.input_names == ["input_ids"]


def test_dynamic_capture_runs_at_other_shapes() -> None:
    model, inputs = llama.tiny()
    graph = capture(model, inputs, llama.dynamic_shapes(model.config))
    assert set(graph.dynamic_dims()["input_ids"]) == {0, 1}
    for batch, seq in [(1, 1), (3, 5), (1, 64)]:
        ids = llama.example_inputs(model.config, batch, seq, seed=batch * seq)[0]
        torch.testing.assert_close(graph(ids)[0], model(ids))


def test_dynamic_capture_of_cache_form_runs_at_other_lengths() -> None:
    config = llama.LlamaConfig.tiny()
    model = llama.model_with_cache(config)
    graph = capture(model, llama.example_inputs_with_cache(config, batch=2, seq=3, past=5),
                    llama.dynamic_shapes_with_cache(config))
    assert graph.input_names == ["input_ids", "past_keys", "past_values"]
    assert set(graph.dynamic_dims()["past_keys"]) == {1, 3}
    for batch, seq, past in [(1, 4, 0), (3, 1, 1), (1, 1, 63)]:
        inputs = llama.example_inputs_with_cache(config, batch, seq, past, seed=batch + seq + past)
        for got, want in zip(graph(*inputs), model(*inputs), strict=True):
            torch.testing.assert_close(got, want)


@pytest.mark.parametrize("heads", [dict(hidden_size=30, num_attention_heads=4),
                                   dict(num_attention_heads=12, num_key_value_heads=5)])
def test_config_rejects_indivisible_heads(heads: dict) -> None:
    with pytest.raises(ValueError, match="divisible"):
        llama.LlamaConfig(**heads)


@pytest.mark.slow
def test_small_preset_matches_flax() -> None:
    model, inputs = llama.small()
    assert sum(t.numel() for t in flatten_tree(model.params).values()) == 124_668_672
    verdict = torch_vs_flax(model, inputs)
    assert verdict.ok, verdict.message

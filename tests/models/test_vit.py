"""ViT: the torch functional model and its Flax NNX reference agree; capture keeps names and dynamism."""

import dataclasses

import pytest
import torch
from hypothesis import given, strategies as st

from crossgraph.graphs import capture, flatten_tree
from crossgraph.models import vit
from helpers import jitter, torch_vs_flax


@st.composite
def configs(draw: st.DrawFn) -> vit.ViTConfig:
    n_head = draw(st.sampled_from([1, 2, 4]))
    patch = draw(st.sampled_from([2, 4]))
    hidden = n_head * draw(st.sampled_from([4, 8]))
    return vit.ViTConfig(image_size=patch * draw(st.integers(1, 4)), patch_size=patch,
                         num_channels=draw(st.integers(1, 3)), hidden_size=hidden,
                         num_hidden_layers=draw(st.integers(1, 2)), num_attention_heads=n_head,
                         intermediate_size=hidden * draw(st.integers(1, 4)), num_classes=draw(st.integers(1, 10)))


@given(config=configs(), batch=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_torch_matches_flax(config: vit.ViTConfig, batch: int, seed: int) -> None:
    model = vit.model(config, seed)
    model = dataclasses.replace(model, params=jitter(model.params, seed))
    verdict = torch_vs_flax(model, vit.example_inputs(config, batch, seed))
    assert verdict.ok, verdict.message


def test_logits_come_from_the_class_token() -> None:
    config = vit.ViTConfig.tiny()
    model, (pixels,) = vit.tiny()
    logits = model(pixels)
    assert logits.shape == (1, config.num_classes)
    hidden = vit.hidden_states(model.params, pixels, config=config)
    assert hidden.shape == (1, 1 + config.num_patches, config.hidden_size)
    head = model.params["classifier"]
    torch.testing.assert_close(logits, hidden[:, 0] @ head["weight"].T + head["bias"])


def test_capture_names_parameters_by_tree_path() -> None:
    model, inputs = vit.tiny()
    graph = capture(model, inputs)
    assert set(graph.parameters()) == set(flatten_tree(model.params))
    assert "encoder.layer.1.attention.attention.query.weight" in graph.parameters()
    assert graph.input_names == ["pixel_values"]


def test_dynamic_capture_runs_at_other_batches() -> None:
    """Captured at batch 2 (batch 1 would be specialized by torch.export); the image size stays fixed."""
    model, _ = vit.tiny()
    graph = capture(model, vit.example_inputs(model.config, batch=2), vit.dynamic_shapes(model.config))
    assert set(graph.dynamic_dims()["pixel_values"]) == {0}
    for batch in (1, 3, 17):
        pixels = vit.example_inputs(model.config, batch, seed=batch)[0]
        torch.testing.assert_close(graph(pixels)[0], model(pixels))


@pytest.mark.parametrize("overrides, match", [({"hidden_size": 30, "num_attention_heads": 4}, "divisible by num"),
                                               ({"image_size": 18, "patch_size": 4}, "divisible by patch")])
def test_config_rejects_indivisible_shapes(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        vit.ViTConfig(**overrides)


@pytest.mark.slow
def test_b16_preset_matches_flax() -> None:
    """ViT-B/16 with a 1000-class head: 86,567,656 parameters, as Hugging Face's ViTForImageClassification."""
    model, inputs = vit.b16()
    assert sum(t.numel() for t in flatten_tree(model.params).values()) == 86_567_656
    verdict = torch_vs_flax(model, inputs)
    assert verdict.ok, verdict.message

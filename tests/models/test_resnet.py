"""ResNet: the torch functional model and its Flax NNX reference agree; capture keeps names and dynamism."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

from crossgraph.graphs import capture, flatten_tree, map_tree
from crossgraph.models import resnet, resnet_flax
from helpers import jitter, torch_vs_flax

RUNNING_STATS = ("running_mean", "running_var")


def positive_running_var(params: dict) -> dict:
    """`params` with every running_var made non-negative again (jitter may push a variance below zero)."""
    def fix(key: str, value: dict | torch.Tensor) -> dict | torch.Tensor:
        if isinstance(value, dict):
            return positive_running_var(value)
        return value.abs() if key == "running_var" else value

    return {k: fix(k, v) for k, v in params.items()}


@st.composite
def configs(draw: st.DrawFn) -> resnet.ResNetConfig:
    n_stages = draw(st.integers(1, 3))
    return resnet.ResNetConfig(layers=tuple(draw(st.integers(1, 2)) for _ in range(n_stages)),
                               widths=tuple(draw(st.sampled_from([4, 8])) for _ in range(n_stages)),
                               num_classes=draw(st.integers(1, 10)), in_channels=draw(st.integers(1, 3)))


@given(config=configs(), batch=st.integers(1, 3), height=st.integers(1, 3), width=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_torch_matches_flax(config: resnet.ResNetConfig, batch: int, height: int, width: int, seed: int) -> None:
    model = resnet.model(config, seed)
    model = dataclasses.replace(model, params=positive_running_var(jitter(model.params, seed)))
    inputs = resnet.example_inputs(config, batch, seed, height=height * config.stride, width=width * config.stride)
    verdict = torch_vs_flax(model, inputs)
    assert verdict.ok, verdict.message


def test_logits_shape_and_running_stats_untouched() -> None:
    """apply is pure: inference batch norm reads the running statistics and never writes them."""
    model, (images,) = resnet.tiny()
    before = flatten_tree(map_tree(torch.clone, model.params))
    assert model(images).shape == (1, model.config.num_classes)
    after = flatten_tree(model.params)
    assert all(torch.equal(after[name], t) for name, t in before.items())


def test_running_stats_are_used() -> None:
    """Shifting one running mean changes the logits, so comparing against Flax exercises the statistics."""
    model, (images,) = resnet.tiny()
    shifted = map_tree(torch.clone, model.params)
    shifted["bn1"]["running_mean"] += 1.0
    assert not torch.allclose(model(images), model.apply(shifted, images))


def test_flax_max_pool_pads_with_minus_inf() -> None:
    """On all-negative input (which the model never feeds it, after ReLU) zero padding would win the max."""
    x = -1.0 - torch.rand(2, 3, 9, 10, generator=torch.Generator().manual_seed(0))
    got = resnet_flax.max_pool_3x3_s2(jnp.asarray(x.permute(0, 2, 3, 1).numpy()))
    np.testing.assert_array_equal(np.asarray(got), F.max_pool2d(x, 3, 2, 1).permute(0, 2, 3, 1).numpy())


def test_capture_names_parameters_by_tree_path() -> None:
    model, inputs = resnet.tiny()
    graph = capture(model, inputs)
    assert set(graph.parameters()) == set(flatten_tree(model.params))
    assert "layer2.0.downsample.0.weight" in graph.parameters()
    assert graph.input_names == ["images"]


def test_dynamic_capture_runs_at_other_shapes() -> None:
    """Captured at batch 2, 32x32 (batch 1 would be specialized by torch.export); run at other sizes."""
    model, _ = resnet.tiny()
    config = model.config
    graph = capture(model, resnet.example_inputs(config, batch=2), resnet.dynamic_shapes(config))
    assert set(graph.dynamic_dims()["images"]) == {0, 2, 3}
    for batch, height, width in [(1, 16, 16), (3, 16, 48), (2, 64, 24)]:
        images = resnet.example_inputs(config, batch, seed=batch, height=height, width=width)[0]
        torch.testing.assert_close(graph(images)[0], model(images))


def test_config_rejects_mismatched_stages() -> None:
    with pytest.raises(ValueError, match="same length"):
        resnet.ResNetConfig(layers=(1, 1), widths=(8,))


@pytest.mark.slow
def test_resnet18_preset_matches_flax() -> None:
    """ResNet-18: 11,689,512 learned parameters (torchvision's count), plus 9,600 running-statistic entries."""
    model, inputs = resnet.resnet18()
    flat = flatten_tree(model.params)
    assert sum(t.numel() for k, t in flat.items() if not k.endswith(RUNNING_STATS)) == 11_689_512
    assert sum(t.numel() for k, t in flat.items() if k.endswith(RUNNING_STATS)) == 9_600
    verdict = torch_vs_flax(model, inputs)
    assert verdict.ok, verdict.message

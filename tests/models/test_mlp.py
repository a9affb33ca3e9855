"""MLP: torch and Flax agree across configs; the converters keep dtypes and the width policy."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from crossgraph.graphs import InputError, flatten_tree
from crossgraph.models import convert, mlp, mlp_flax
from helpers import jitter, torch_vs_flax


@given(widths=st.lists(st.integers(1, 24), min_size=2, max_size=5),
       activation=st.sampled_from(sorted(mlp.ACTIVATIONS)), batch=st.integers(1, 5), seed=st.integers(0, 10**6))
def test_torch_matches_flax(widths: list[int], activation: str, batch: int, seed: int) -> None:
    config = mlp.MLPConfig(in_features=widths[0], hidden=tuple(widths[1:-1]), out_features=widths[-1],
                           activation=activation)
    model = mlp.model(config, seed)
    model = dataclasses.replace(model, params=jitter(model.params, seed))
    verdict = torch_vs_flax(model, mlp.example_inputs(config, batch, seed))
    assert verdict.ok, verdict.message


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_to_jax_to_torch_round_trip_keeps_values_and_dtype(dtype: torch.dtype) -> None:
    params = {"a": {"w": torch.randn(3, 4).to(dtype)}, "n": torch.arange(5)}
    back = convert.to_torch(convert.to_jax(params))
    assert torch.equal(back["a"]["w"], params["a"]["w"]) and back["a"]["w"].dtype == dtype
    assert torch.equal(back["n"], params["n"].to(torch.int32))


def test_width_policy() -> None:
    assert convert.tensor_to_jax(torch.tensor([1, 2])).dtype == jnp.int32
    with pytest.raises(InputError, match="outside int32"):
        convert.tensor_to_jax(torch.tensor([2**40]))
    with pytest.raises(InputError, match="float64"):
        convert.tensor_to_jax(torch.ones(2, dtype=torch.float64))


def test_flax_reference_rejects_wrong_trees() -> None:
    config = mlp.MLPConfig.tiny()
    params = convert.to_jax(mlp.init(config))
    del params["layers"]["2"]
    with pytest.raises(ValueError, match="missing layers"):
        mlp_flax.from_params(config, params)
    wide = convert.to_jax(mlp.init(dataclasses.replace(config, in_features=17)))
    with pytest.raises(ValueError, match=r"shape \(17, 32\) != \(16, 32\)"):
        mlp_flax.from_params(config, wide)


def test_small_preset_shape() -> None:
    model, (x,) = mlp.small()
    assert model(x).shape == (32, 10)
    assert sum(t.numel() for t in flatten_tree(model.params).values()) == 784 * 512 + 512 + 512 * 512 + 512 + 5130
    assert np.isfinite(model(x).numpy()).all()

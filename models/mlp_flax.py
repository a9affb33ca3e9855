"""The MLP in Flax NNX, reading the torch model's parameter tree (converted with `to_jax`)."""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx

from crossgraph.models import convert
from crossgraph.models.mlp import MLPConfig

ACTIVATIONS = {"relu": jax.nn.relu, "gelu": lambda x: jax.nn.gelu(x, approximate=False), "tanh": jax.numpy.tanh}


class MLP(nnx.Module):
    """nnx.Linear layers with the configured activation between them."""

    def __init__(self, config: MLPConfig, *, rngs: nnx.Rngs) -> None:
        widths = config.widths
        self.layers = nnx.List([nnx.Linear(i, o, rngs=rngs) for i, o in zip(widths, widths[1:])])
        self.activation = config.activation

    def __call__(self, x: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = act(x)
        return x


def from_params(config: MLPConfig, params: dict[str, Any]) -> MLP:
    """The Flax MLP holding `params` (a jax tree in the torch model's layout)."""
    pure = {"layers": {int(i): convert.linear(p) for i, p in params["layers"].items()}}
    return convert.build_nnx(lambda: MLP(config, rngs=nnx.Rngs(0)), pure)

"""A multilayer perceptron as a functional model: the smallest thing that exercises the whole pipeline."""

from __future__ import annotations

import dataclasses
import functools

import torch
import torch.nn.functional as F

from crossgraph.graphs import FunctionalModel

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "tanh": torch.tanh}


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    """Layer widths from input to output, and the activation between layers."""

    in_features: int = 784
    hidden: tuple[int, ...] = (512, 512)
    out_features: int = 10
    activation: str = "gelu"

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}")

    @classmethod
    def tiny(cls) -> "MLPConfig":
        return cls(in_features=16, hidden=(32, 32), out_features=8)

    @classmethod
    def small(cls) -> "MLPConfig":
        return cls()

    @property
    def widths(self) -> tuple[int, ...]:
        return (self.in_features, *self.hidden, self.out_features)


def init(config: MLPConfig, seed: int = 0) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """{"layers": {"0": {"weight": [out, in], "bias": [out]}, ...}} with torch.nn.Linear's default init."""
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for i, (n_in, n_out) in enumerate(zip(config.widths, config.widths[1:])):
        bound = n_in ** -0.5
        layers[str(i)] = {"weight": (torch.rand(n_out, n_in, generator=g) * 2 - 1) * bound,
                          "bias": (torch.rand(n_out, generator=g) * 2 - 1) * bound}
    return {"layers": layers}


def apply(params: dict, x: torch.Tensor, *, config: MLPConfig) -> torch.Tensor:
    """x [..., in_features] -> [..., out_features]; the activation follows every layer but the last."""
    act = ACTIVATIONS[config.activation]
    layers = params["layers"]
    for i in range(len(layers)):
        x = F.linear(x, layers[str(i)]["weight"], layers[str(i)]["bias"])
        if i < len(layers) - 1:
            x = act(x)
    return x


def model(config: MLPConfig, seed: int = 0) -> FunctionalModel:
    """The MLP with fresh parameters, bound to its config and its Flax reference."""
    return FunctionalModel(name="mlp", apply=functools.partial(apply, config=config), params=init(config, seed),
                           config=config, flax_reference="crossgraph.models.mlp_flax:from_params")


def example_inputs(config: MLPConfig, batch: int = 4, seed: int = 0) -> tuple[torch.Tensor]:
    return (torch.randn(batch, config.in_features, generator=torch.Generator().manual_seed(seed)),)


def dynamic_shapes(config: MLPConfig) -> tuple[dict[int, torch.export.Dim]]:
    """Symbolic batch for `x`."""
    return ({0: torch.export.Dim("batch", min=1, max=65536)},)


def tiny() -> tuple[FunctionalModel, tuple[torch.Tensor]]:
    """SPEC factory: `crossgraph check crossgraph.models.mlp:tiny`."""
    config = MLPConfig.tiny()
    return model(config), example_inputs(config)


def small() -> tuple[FunctionalModel, tuple[torch.Tensor]]:
    """SPEC factory: the MNIST-sized MLP."""
    config = MLPConfig.small()
    return model(config), example_inputs(config, batch=32)

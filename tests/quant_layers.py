"""Test layers calling the quantized dialect ops on weights quantized by graphs/quant.py, shared by the jax and
inductor tests of those ops. Each layer runs on x [B, S, K] with a bias and on x[0] [S, K] without, so one graph
covers 3-D and 2-D x, bias and none."""

from __future__ import annotations

import torch
from torch import nn

from crossgraph.graphs import quant

ops = torch.ops.crossgraph
N = 24
"""Output features of every test weight."""


def randn(*shape: int, seed: int) -> torch.Tensor:
    """Standard normal values, reproducible by seed."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class WeightOnly(nn.Module):
    """crossgraph.weight_only_linear of a random W [N, K] quantized by quantize_weight."""

    def __init__(self, k: int, bits: int, group_size: int, symmetric: bool) -> None:
        super().__init__()
        qweight, scales, zero_points = quant.quantize_weight(0.1 * randn(N, k, seed=1), bits, group_size, symmetric)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("zero_points", zero_points)
        self.register_buffer("bias", randn(N, seed=2))
        self.args = (k, bits, quant.storage_block(k, group_size))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        linear = ops.weight_only_linear
        return (linear(x, self.qweight, self.scales, self.zero_points, self.bias, *self.args),
                linear(x[0], self.qweight, self.scales, self.zero_points, None, *self.args))


class Int8Linear(nn.Module):
    """crossgraph.dynamic_quant_linear, or static_quant_linear with `static` = (x_scale, x_zero_point), of a random
    W [K, N] quantized by quantize_weight_int8."""

    def __init__(self, k: int, static: tuple[float, int] | None = None) -> None:
        super().__init__()
        qweight, w_scale = quant.quantize_weight_int8(randn(k, N, seed=3))
        self.register_buffer("qweight", qweight)
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("bias", randn(N, seed=4))
        self.static = static

    def linear(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """The op on x with `bias`."""
        if self.static is None:
            return ops.dynamic_quant_linear(x, self.qweight, self.w_scale, bias)
        return ops.static_quant_linear(x, self.qweight, self.w_scale, bias, *self.static)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.linear(x, self.bias), self.linear(x[0], None)


class AllThree(nn.Module):
    """Each quantized linear on x: weight-only 4-bit group 16, dynamic, static."""

    def __init__(self) -> None:
        super().__init__()
        self.linears = nn.ModuleList([WeightOnly(40, 4, 16, False), Int8Linear(40), Int8Linear(40, (0.05, 128))])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [out for linear in self.linears for out in linear(x)]

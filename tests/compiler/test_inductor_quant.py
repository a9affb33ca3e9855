"""The inductor target's quantized linears (compiler/quant_decompositions.py) against the eager dialect ops.

An AOTInductor compile takes ~10 s here, so each test compiles one graph holding many configurations (three
compiles in all): weight-only in 4 and 8 bits, per-channel and grouped, symmetric or not, K a multiple of the
block or not; dynamic and static int8, exact, also past 2^24; float16/bfloat16 inputs; a symbolic batch unfrozen.
Every layer runs on x [B, S, K] with a bias and on x[0] [S, K] without.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from crossgraph.compiler import inductor
from crossgraph.compiler.dialect_decompositions import decompose, dialect_nodes
from crossgraph.compiler.lower import lower
from crossgraph.compiler.subject import to_numpy
from crossgraph.graphs import Graph, capture
from quant_layers import N, AllThree, Int8Linear, WeightOnly, randn

pytestmark = pytest.mark.skipif(inductor.unavailable() is not None, reason=str(inductor.unavailable()))


class Many(nn.Module):
    """Each layer on the input numbered with it: many configurations in one graph, for one compile."""

    def __init__(self, layers: list[tuple[nn.Module, int]]) -> None:
        super().__init__()
        self.layers = nn.ModuleList([layer for layer, _ in layers])
        self.which = [i for _, i in layers]

    def forward(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        return [out for layer, i in zip(self.layers, self.which) for out in layer(xs[i])]


def _saturating(k: int, static: tuple[float, int] | None) -> tuple[Int8Linear, torch.Tensor]:
    """An Int8Linear and x [1, 2, K] at +-6 with each weight row +-127 of x's sign: the integer sums reach
    K * 127 * ~128, about 2^29 for K = 32768: a float32 dot of the integer values would round, even one summing
    K / 16 per SIMD lane."""
    x = torch.where(randn(1, 2, k, seed=7) > 0, 6.0, -6.0)
    model = Int8Linear(k, static)
    model.qweight.copy_(torch.where(x[0, 0, :, None] > 0, 127, -127).to(torch.int8).expand(k, N))
    return model, x


INT8_CASES: list[tuple[float, int] | None] = [None, (0.05, 128), (0.01, 100)]
"""Dynamic; static; static with x / 0.01 + 100 leaving [0, 255] at both ends for x ~ N(0, 1)."""


def _assert_close(actual: list[np.ndarray], expected: list[torch.Tensor], exact: bool) -> None:
    """Same dtypes. float16/bfloat16 outputs within one step of their dtype (a float32 result a rounding apart,
    rounded once as the reference, may straddle a boundary). float32 ones from a float32 dot within 1e-5: the
    weights dequantize equally, only the summation order differs, a few ulps of sum |x| |w| (a few units, K <=
    64). From an exact integer path (`exact`), the outputs without a bias (every other one) bitwise, those with
    one within 2 ulps of the largest output: Inductor fuses the scale multiply and the bias add into one kernel,
    where the C++ compiler may contract them into a fused multiply-add, half an ulp of the product apart."""
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert str(a.dtype) == str(e.dtype).removeprefix("torch.")
        eps = torch.finfo(e.dtype).eps
        a, e = np.asarray(a, dtype=np.float32), e.float().numpy()
        if exact and i % 2:
            np.testing.assert_array_equal(a, e)
        elif eps > 1e-5:
            np.testing.assert_allclose(a, e, rtol=eps, atol=eps)
        elif exact:
            np.testing.assert_allclose(a, e, rtol=0, atol=2 * np.spacing(np.abs(e).max()))
        else:
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def int8_case() -> tuple[Graph, list[torch.Tensor]]:
    """Every int8 case on x [2, 5, 40], on it in float16 and bfloat16, and saturated on x [1, 2, 32768]."""
    x = randn(2, 5, 40, seed=6)
    saturated = [_saturating(32768, static) for static in INT8_CASES]
    inputs = [x, x.half(), x.bfloat16(), *[sx for _, sx in saturated]]
    layers = [*[(Int8Linear(40, static), i) for i in range(3) for static in INT8_CASES],
              *[(model, 3 + i) for i, (model, _) in enumerate(saturated)]]
    return capture(Many(layers), tuple(inputs)), inputs


def test_weight_only() -> None:
    """Every bits x grouping x symmetry on K = 40 (no block size divides it; per-channel pads to 64), three on
    K = 64 (a multiple of every block), one on float16 and bfloat16 x; frozen: the dequantized weights folded."""
    configs = [(bits, group, symmetric) for bits in (4, 8) for group in (0, 16, 32) for symmetric in (True, False)]
    x = randn(2, 5, 40, seed=5)
    inputs = [x, randn(2, 5, 64, seed=6), x.half(), x.bfloat16()]
    layers = [*[(WeightOnly(40, *config), 0) for config in configs],
              *[(WeightOnly(64, *config), 1) for config in [(4, 16, True), (8, 0, False), (4, 32, False)]],
              *[(WeightOnly(40, 4, 16, False), i) for i in (2, 3)]]
    graph = capture(Many(layers), tuple(inputs))
    _assert_close(lower(graph, "inductor")(*inputs), graph(*inputs), exact=False)


def test_int8_and_half_precision(int8_case: tuple[Graph, list[torch.Tensor]]) -> None:
    graph, inputs = int8_case
    _assert_close(lower(graph, "inductor")(*inputs), graph(*inputs), exact=True)


def test_decomposition_leaves_no_dialect_op(int8_case: tuple[Graph, list[torch.Tensor]]) -> None:
    """Run eagerly, the decomposed graph (the reference's quantization, an int8 _int_mm) equals the dialect's."""
    graph, inputs = int8_case
    decomposed = decompose(graph, "inductor")
    assert not dialect_nodes(decomposed)
    assert torch.ops.aten._int_mm.default in {n.target for n in decomposed.fx.nodes}
    _assert_close([to_numpy(t) for t in decomposed(*inputs)], graph(*inputs), exact=True)


def test_symbolic_batch_unfrozen() -> None:
    """Weights left as inputs of the kernels (freeze=False) and a symbolic batch, run at other sizes."""
    batch = torch.export.Dim("batch", min=1, max=16)
    graph = capture(AllThree(), (randn(2, 5, 40, seed=8),), ({0: batch},))
    artifact = lower(graph, "inductor", freeze=False)
    for size in (1, 7):
        x = randn(size, 5, 40, seed=10 + size)
        _assert_close(artifact(x), graph(x), exact=False)

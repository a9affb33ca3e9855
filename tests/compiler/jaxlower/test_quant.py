"""The jax target's quantized linears (compiler/jaxlower/quant.py) against the eager dialect ops: weight-only in 4
and 8 bits, per-channel and grouped (K a multiple of the block or not), symmetric or not; dynamic and static int8,
exact; float16/bfloat16 inputs; a symbolic batch through a saved artifact.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from crossgraph.compiler.lower import lower
from crossgraph.graphs import Graph, capture, quant
from quant_layers import N, AllThree, Int8Linear, WeightOnly, randn

pytest.importorskip("jax")


def _run(graph: Graph, *inputs: torch.Tensor) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(the jax artifact's outputs, the eager graph's) as float32 numpy arrays."""
    actual = lower(graph, "jax")(*inputs)
    return ([np.asarray(a, dtype=np.float32) for a in actual],
            [t.float().numpy() for t in graph(*inputs)])


def _assert_exact(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    """An exact integer path's (with bias, without) outputs: without, bitwise equal; with, within 2 ulps of the
    largest output: XLA may fuse the scale multiply and the bias add into a fused multiply-add, half an ulp of the
    product apart."""
    (a, a_plain), (e, e_plain) = actual, expected
    np.testing.assert_array_equal(a_plain, e_plain)
    np.testing.assert_allclose(a, e, rtol=0, atol=2 * np.spacing(np.abs(e).max()))


# ---- weight-only ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [40, 64], ids=["k_not_a_block_multiple", "k_a_block_multiple"])
@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "asymmetric"])
@pytest.mark.parametrize("group_size", [0, 16, 32], ids=["per_channel", "group16", "group32"])
@pytest.mark.parametrize("bits", [4, 8])
def test_weight_only(bits: int, group_size: int, symmetric: bool, k: int) -> None:
    """The dequantized weights are equal elementwise; only the float32 dot's summation order differs, a few ulps
    of sum |x| |w| (a few units here, K <= 64): 1e-5."""
    x = randn(2, 5, k, seed=5)
    actual, expected = _run(capture(WeightOnly(k, bits, group_size, symmetric), (x,)), x)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)


# ---- int8 with quantized activations ----------------------------------------------------------------------
INT8_CASES: dict[str, tuple[float, int] | None] = {
    "dynamic": None,
    "static": (0.05, 128),
    "static_clamped": (0.01, 100),  # x / 0.01 + 100 leaves [0, 255] at both ends
}


@pytest.mark.parametrize("name", INT8_CASES)
def test_int8(name: str) -> None:
    x = randn(2, 5, 40, seed=6)
    _assert_exact(*_run(capture(Int8Linear(40, INT8_CASES[name]), (x,)), x))


def _integer_product(model: Int8Linear, x: torch.Tensor) -> torch.Tensor:
    """(xq - zero point) @ qweight in float64 (exact), x quantized as `model` does."""
    if model.static is None:
        xq, _, zero = quant.dynamic_quantize(x)
    else:
        xq, zero = quant.static_quantize(x, *model.static), model.static[1]
    return (xq.double() - zero) @ model.qweight.double()


@pytest.mark.parametrize("name", INT8_CASES)
def test_int8_exact_beyond_float32_integers(name: str) -> None:
    """x at +-6 and each weight row +-127 with x's sign: the sums reach K * 127 * ~128, about 2^29 for K = 32768,
    where a float32 dot of the integer values would round (even one summing K / 16 per SIMD lane)."""
    k = 32768
    x = torch.where(randn(1, 2, k, seed=7) > 0, 6.0, -6.0)
    model = Int8Linear(k, INT8_CASES[name])
    model.qweight.copy_(torch.where(x[0, 0, :, None] > 0, 127, -127).to(torch.int8).expand(k, N))
    assert _integer_product(model, x).abs().max() > 2 ** 28
    _assert_exact(*_run(capture(model, (x,)), x))


# ---- half precision, symbolic batch -------------------------------------------------------------------------
HALF_MODELS: dict[str, Any] = {
    "weight_only": lambda: WeightOnly(40, 4, 16, False),
    "dynamic": lambda: Int8Linear(40),
    "static": lambda: Int8Linear(40, (0.05, 128)),
}


@pytest.mark.parametrize("model", HALF_MODELS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision(dtype: torch.dtype, model: str) -> None:
    """Computed in float32 and rounded once to x's dtype, as the reference: equal but for one step of that dtype
    where the float32 results straddle a rounding boundary."""
    x = randn(2, 5, 40, seed=8).to(dtype)
    graph = capture(HALF_MODELS[model](), (x,))
    actual = lower(graph, "jax")(x)
    for a, e in zip(actual, graph(x)):
        assert str(a.dtype) == str(dtype).removeprefix("torch.")
        np.testing.assert_allclose(np.asarray(a, dtype=np.float32), e.float().numpy(),
                                   rtol=torch.finfo(dtype).eps, atol=torch.finfo(dtype).eps)


def test_symbolic_batch_saved_and_loaded(tmp_path: Any) -> None:
    """The saved jax.export module has a symbolic batch (the division barrier broadcasts to it) and runs at other
    batch sizes; tolerances as for the weight-only dot (1e-5, which also holds the int8 ones' rounding)."""
    from crossgraph.compiler import jaxlower

    batch = torch.export.Dim("batch", min=1, max=16)
    graph = capture(AllThree(), (randn(2, 5, 40, seed=9),), ({0: batch},))
    loaded = jaxlower.load(lower(graph, "jax").save(tmp_path))
    for size in (1, 7):
        x = randn(size, 5, 40, seed=10 + size)
        for a, e in zip(loaded(x), graph(x)):
            np.testing.assert_allclose(a, e.numpy(), rtol=1e-5, atol=1e-5)

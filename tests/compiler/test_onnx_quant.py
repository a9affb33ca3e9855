"""The quantized dialect ops on the onnx target (compiler/onnx_quant.py): graphs calling them lower to MatMulNBits,
DynamicQuantizeMatMul and a QDQ MatMul that keep the integer weights as they are stored, and ONNX Runtime's results
match the eager ops. Each group of cases is one graph, exported once (an export takes seconds)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from crossgraph.compiler.lower import lower
from crossgraph.compiler.onnx_quant import quant_translations
from crossgraph.graphs import capture
from crossgraph.graphs.quant import dequantize_weight, quantize_weight, quantize_weight_int8, storage_block

pytest.importorskip("onnxruntime")

ops = torch.ops.crossgraph
N, K = 24, 40
"""Output and input features: K = 40 is a multiple of no block (16: 3 blocks, 32: 2, per-channel: one of 64)."""
X_SCALE, X_ZERO_POINT = 0.02, 120
"""Static int8's activation quantization: x ~ N(0, 1) fills [-2.4, 2.7] and a few values saturate."""


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _inputs() -> list[torch.Tensor]:
    """A 2-D x, a 3-D x, a float16 x and a 1-D x."""
    return [_randn(5, K, seed=1), _randn(2, 3, K, seed=2), _randn(3, K, seed=3).half(), _randn(K, seed=4)]


@dataclasses.dataclass(frozen=True)
class Case:
    """One op call: the op, the weight's quantization (weight-only), whether it has the bias, which x."""

    op: str
    bits: int = 8
    group: int = 0
    symmetric: bool = True
    bias: bool = True
    x: int = 0  # index in _inputs()

    @property
    def id(self) -> str:
        rank = ("2d", "3d", "fp16", "1d")[self.x]
        if self.op == "weight_only":
            grouping = f"g{self.group}" if self.group else "channel"
            return f"{self.bits}bit-{grouping}-{'sym' if self.symmetric else 'asym'}-{self._bias}-{rank}"
        return f"{self.op}-{self._bias}-{rank}"

    @property
    def _bias(self) -> str:
        return "bias" if self.bias else "nobias"


WEIGHT_ONLY = [Case("weight_only", bits, group, symmetric, bias, x) for bits in (4, 8) for group in (0, 16, 32)
               for symmetric in (True, False) for bias in (True, False) for x in (0, 1)]
WEIGHT_ONLY.append(Case("weight_only", 4, 16, False, True, 2))
INT8 = [Case(name, bias=bias, x=x) for name in ("dynamic", "static") for bias in (True, False) for x in (0, 1)]
INT8 += [Case(name, x=x) for name in ("dynamic", "static") for x in (2, 3)]


class QuantLinears(nn.Module):
    """One quantized linear per case, each with its own weight W [N, K] quantized as the case says."""

    def __init__(self, cases: list[Case]) -> None:
        super().__init__()
        self.cases = cases
        self.register_buffer("bias", _randn(N, seed=0))
        for i, case in enumerate(cases):  # weights apart, so that the exporter merges no two calls
            weight = _randn(N, K, seed=10 + i)
            if case.op == "weight_only":
                qweight, scales, zero_points = quantize_weight(weight, case.bits, case.group, case.symmetric)
                if zero_points is not None:  # a None buffer breaks torch.export (2.13)
                    self.register_buffer(f"zero_points{i}", zero_points)
            else:
                qweight, scales = quantize_weight_int8(weight.T)
            self.register_buffer(f"qweight{i}", qweight)
            self.register_buffer(f"scales{i}", scales)

    def forward(self, x2: torch.Tensor, x3: torch.Tensor, x16: torch.Tensor,
                x1: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.call(i, case, (x2, x3, x16, x1)[case.x]) for i, case in enumerate(self.cases))

    def call(self, i: int, case: Case, x: torch.Tensor) -> torch.Tensor:
        qweight, scales = getattr(self, f"qweight{i}"), getattr(self, f"scales{i}")
        bias = self.bias.to(x.dtype) if case.bias else None
        if case.op == "weight_only":
            zero_points = getattr(self, f"zero_points{i}", None)
            return ops.weight_only_linear(x, qweight, scales, zero_points, bias, K, case.bits,
                                          storage_block(K, case.group))
        if case.op == "dynamic":
            return ops.dynamic_quant_linear(x, qweight, scales, bias)
        return ops.static_quant_linear(x, qweight, scales, bias, X_SCALE, X_ZERO_POINT)


@dataclasses.dataclass
class Lowered:
    """A graph of cases lowered to onnx, with ONNX Runtime's outputs and the eager ones by case id."""

    model: onnx.ModelProto
    actual: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    module: QuantLinears


def _lowered(cases: list[Case]) -> Lowered:
    module = QuantLinears(cases)
    inputs = _inputs()
    artifact = lower(capture(module, tuple(inputs)), "onnx")
    ids = [case.id for case in cases]
    expected = [t.float().numpy() for t in module(*inputs)]
    actual = [a.astype(np.float32) for a in artifact(*inputs)]
    return Lowered(artifact.model, dict(zip(ids, actual)), dict(zip(ids, expected)), module)


@pytest.fixture(scope="module")
def weight_only() -> Lowered:
    return _lowered(WEIGHT_ONLY)


@pytest.fixture(scope="module")
def int8() -> Lowered:
    return _lowered(INT8)


def _op_types(model: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in model.graph.node]


def _float_initializer_sizes(model: onnx.ModelProto) -> list[int]:
    return [int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT]


# ---- weight-only: MatMulNBits -----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", WEIGHT_ONLY, ids=lambda c: c.id)
def test_weight_only_matches_the_op(weight_only: Lowered, case: Case) -> None:
    """Both sides dequantize the same weight exactly and sum K float32 products, in different orders: float32
    rounding, ~1e-7 of the output's scale. A float16 x is cast back in the end, where the float32 results, this
    close, can round to neighbouring float16 values: one float16 step, 2^-10 relative."""
    expected = weight_only.expected[case.id]
    rtol = 2**-10 if case.x == 2 else 1e-5
    np.testing.assert_allclose(weight_only.actual[case.id], expected, rtol=rtol,
                               atol=rtol * np.abs(expected).max())


def test_weight_only_is_matmulnbits_on_the_stored_weight(weight_only: Lowered) -> None:
    """One MatMulNBits per call with the graph's K, N, bits and block; the weights and zero points stay uint8
    initializers and there is no float copy of a weight (the largest float tensor is a bias or scales)."""
    model = weight_only.model
    nodes = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == len(WEIGHT_ONLY) and {n.domain for n in nodes} == {"com.microsoft"}
    assert "MatMul" not in _op_types(model)
    attributes = {tuple(onnx.helper.get_attribute_value(a) for a in sorted(n.attribute, key=lambda a: a.name)
                        if a.name in ("K", "N", "bits", "block_size")) for n in nodes}
    assert attributes == {(K, N, c.bits, storage_block(K, c.group)) for c in WEIGHT_ONLY}
    initializers = {t.name: t for t in model.graph.initializer}
    for node in nodes:
        stored = [initializers[name] for i, name in enumerate(node.input) if i in (1, 3) and name]
        assert all(t.data_type == onnx.TensorProto.UINT8 for t in stored)
    assert max(_float_initializer_sizes(model)) < N * K / 2


def test_weight_only_at_accuracy_level_4(monkeypatch: pytest.MonkeyPatch) -> None:
    """quant_translations(4) exports MatMulNBits at accuracy level 4, which quantizes x to int8 per block (scale:
    the block's absmax / 127) before integer products: an element of x moves by at most max|x| / 254, an output
    by at most that times the sum of |W| over its row."""
    from crossgraph.compiler import onnx_rt

    monkeypatch.setattr(onnx_rt, "TRANSLATIONS", {**onnx_rt.TRANSLATIONS, **quant_translations(4)})
    cases = [Case("weight_only", 4, 32, True, True, 0), Case("weight_only", 8, 0, False, False, 1)]
    lowered = _lowered(cases)
    levels = [onnx.helper.get_attribute_value(a) for n in lowered.model.graph.node for a in n.attribute
              if a.name == "accuracy_level"]
    assert levels == [4, 4]
    for i, case in enumerate(cases):
        buffers = [getattr(lowered.module, f"{name}{i}", None) for name in ("qweight", "scales", "zero_points")]
        weight = dequantize_weight(*buffers, K, case.bits)
        bound = float(_inputs()[case.x].abs().max()) / 254 * float(weight.abs().sum(1).max())
        np.testing.assert_allclose(lowered.actual[case.id], lowered.expected[case.id], rtol=1e-5, atol=bound)


def test_a_4bit_model_is_a_fraction_of_the_float_one() -> None:
    """4 bits a weight plus a float32 scale per 32: 0.625 bytes a weight against 4 for float32."""

    class Int4(nn.Module):
        def __init__(self, linear: nn.Linear) -> None:
            super().__init__()
            qweight, scales, _ = quantize_weight(linear.weight.detach(), 4, 32)
            self.register_buffer("qweight", qweight)
            self.register_buffer("scales", scales)
            self.register_buffer("bias", linear.bias.detach())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return ops.weight_only_linear(x, self.qweight, self.scales, None, self.bias, 256, 4, 32)

    linear = nn.Linear(256, 256)
    x = _randn(2, 256, seed=5)
    sizes = [len(lower(capture(m, (x,)), "onnx").model.SerializeToString()) for m in (linear, Int4(linear))]
    assert sizes[1] < sizes[0] / 5


# ---- dynamic and static int8 ------------------------------------------------------------------------------------
def _x_scale(case: Case) -> float:
    """The activation's quantization step: fixed for static, DynamicQuantizeLinear's range / 255 for dynamic."""
    if case.op == "static":
        return X_SCALE
    x = _inputs()[case.x].float()
    return float((x.max().clamp(min=0) - x.min().clamp(max=0)) / 255)


@pytest.mark.parametrize("case", INT8, ids=lambda c: c.id)
def test_int8_matches_the_op(int8: Lowered, case: Case) -> None:
    """Both sides quantize x alike and sum integer products exactly; the one difference allowed is an element of
    x landing on the other side of a rounding tie (x / scale computed as x * (1 / scale), or the scale rounded
    apart by an ulp), which moves its quantized value one step and an output by at most x_scale * max|W|.
    Plus float32 rounding of the scaling (1e-5 relative), and a float16 step for the float16 x."""
    expected = int8.expected[case.id]
    i = INT8.index(case)
    weight = getattr(int8.module, f"qweight{i}").float() * getattr(int8.module, f"scales{i}")
    step = _x_scale(case) * float(weight.abs().max())
    rtol = 2**-10 if case.x == 2 else 1e-5
    np.testing.assert_allclose(int8.actual[case.id], expected, rtol=rtol, atol=step + rtol * np.abs(expected).max())


def test_int8_keeps_the_int8_weight(int8: Lowered) -> None:
    """dynamic: one DynamicQuantizeMatMul per call; static: one MatMul per call of DequantizeLinear(QuantizeLinear
    of x) and DequantizeLinear of the weight (the exporter merges the QuantizeLinear of calls on one x). Every
    weight stays an int8 [K, N] initializer; no float copy of one."""
    model = int8.model
    producers = {name: node for node in model.graph.node for name in node.output}
    initializers = {t.name: t for t in model.graph.initializer}
    assert _op_types(model).count("DynamicQuantizeMatMul") == sum(c.op == "dynamic" for c in INT8)
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert len(matmuls) == sum(c.op == "static" for c in INT8)
    for matmul in matmuls:
        x, weight = (producers[name] for name in matmul.input)
        assert x.op_type == weight.op_type == "DequantizeLinear"
        assert producers[x.input[0]].op_type == "QuantizeLinear"
        assert initializers[weight.input[0]].data_type == onnx.TensorProto.INT8
    weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert len(weights) == len(INT8) and all(list(t.dims) == [K, N] for t in weights)
    assert max(_float_initializer_sizes(model)) < N * K / 2


def test_static_runs_as_integer_kernels(int8: Lowered, tmp_path: Any) -> None:
    """ONNX Runtime's CPU EP turns every static QDQ MatMul into MatMulIntegerToFloat, 2-D x and static shapes
    included (where a float Gemm would otherwise take the MatMul and the bias), and leaves no float matmul."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(int8.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = _op_types(onnx.load(options.optimized_model_filepath))
    assert optimized.count("MatMulIntegerToFloat") == sum(c.op == "static" for c in INT8)
    assert optimized.count("DynamicQuantizeMatMul") == sum(c.op == "dynamic" for c in INT8)
    assert not {"Gemm", "MatMul", "FusedMatMul", "DequantizeLinear"} & set(optimized)

"""Quantized models end to end: each scheme on ONNX, JAX and Inductor against the quantized graph run eagerly,
the accuracy report against the float graph, and `crossgraph quantize` on the command line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from crossgraph.compiler import quantization
from crossgraph.compiler.cli import main
from crossgraph.compiler.quantization import check_quantized, text_batches
from crossgraph.compiler.lower import lower
from crossgraph.graphs import InputError, capture, quant
from crossgraph.models import gpt2, hf, llama, mlp

INT_SCHEMES = ("int8", "int4", "dynamic", "static")


def statuses(report: quantization.QuantReport) -> dict[str, str]:
    """Each target's status: every target a test names must run and pass here (a skip is not a pass)."""
    return {name: result.status for name, result in report.parity.targets.items()}


@pytest.mark.parametrize("scheme", INT_SCHEMES)
def test_gpt2_on_every_target(scheme: str) -> None:
    model, inputs = gpt2.tiny()
    report = check_quantized(model, inputs, scheme, ("onnx", "jax", "inductor"), progress=False)
    assert statuses(report) == dict.fromkeys(("onnx", "jax", "inductor"), "pass"), report.parity.table()
    assert report.quantized_nodes == (10 if scheme in ("int8", "int4") else 9)  # 9 linears, weight-only: + wte
    assert report.accuracy.cosine > (0.99 if scheme == "int4" else 0.999)
    assert report.accuracy.perplexity_float is not None and report.accuracy.perplexity_quantized is not None


@pytest.mark.parametrize("factory", [llama.tiny, hf.gpt2_tiny, hf.llama_tiny], ids=["llama", "hf_gpt2", "hf_llama"])
@pytest.mark.parametrize("scheme", INT_SCHEMES)
def test_llama_and_hugging_face_on_onnx_and_jax(factory, scheme: str) -> None:
    torch.manual_seed(0)  # Hugging Face's initialization draws from the global generator
    model, inputs = factory()
    report = check_quantized(model, inputs, scheme, ("onnx", "jax"), progress=False, examples=2)
    assert statuses(report) == dict.fromkeys(("onnx", "jax"), "pass"), report.parity.table()
    assert report.quantized_nodes >= 8
    # int4 of random Gaussian weights, embeddings included: 0.991-0.996 measured over seeds 0-5 on the example
    # inputs, down to 0.990 on drawn ones; 8-bit schemes stay above 0.9998.
    assert report.accuracy.cosine > (0.98 if scheme == "int4" else 0.999)


@pytest.mark.parametrize("scheme, targets", [("fp16", ("onnx", "jax")), ("bf16", ("jax", "inductor"))])
def test_low_precision_float_is_judged_by_its_dtype(scheme: str, targets: tuple[str, ...]) -> None:
    """The cast graph's float32 outputs carry float16/bfloat16 rounding: parity uses that dtype's tolerances.
    (ONNX Runtime's CPU provider has no bfloat16 arithmetic: docs/known-divergences.md.)"""
    model, inputs = gpt2.tiny()
    report = check_quantized(model, inputs, scheme, targets, progress=False)
    assert statuses(report) == dict.fromkeys(targets, "pass"), report.parity.table()
    assert report.quantized_nodes > 9 and report.accuracy.cosine > 0.999
    low = {"fp16": "float16", "bf16": "bfloat16"}[scheme]
    assert report.parity.policy["by_dtype"]["float32"] == report.parity.policy["by_dtype"][low]


def test_llama_dynamic_on_inductor() -> None:
    model, inputs = llama.tiny()
    report = check_quantized(model, inputs, "dynamic", ("inductor",), progress=False)
    assert statuses(report) == {"inductor": "pass"}, report.parity.table()


def test_perplexity_comes_from_the_shipped_text() -> None:
    batches = text_batches(128, 2, 16)
    assert batches and all(b[0].shape == (2, 16) and int(b[0].max()) < 128 for b in batches)
    text = bytes(batches[0][0][0].tolist()).decode("ascii")
    assert text.startswith("A compiler is a")


def test_perplexity_is_reported_only_for_language_models() -> None:
    model, inputs = mlp.tiny()
    report = check_quantized(model, inputs, "dynamic", ("onnx",), progress=False)
    assert statuses(report) == {"onnx": "pass"}, report.parity.table()
    assert report.accuracy.perplexity_float is None and "perplexity" not in report.accuracy.text()
    assert report.accuracy.cosine > 0.999


def test_accuracy_flags_non_finite_quantized_outputs() -> None:
    """A quantized graph that gives NaN has a NaN cosine, and the report's exit code is a failure."""
    model, inputs = gpt2.tiny()
    graph = capture(model, inputs)
    broken = quantization.quantize(graph, "dynamic")
    for node in broken.fx.nodes:
        if node.op == "output":
            with broken.fx.inserting_before(node):
                nan = broken.fx.call_function(torch.ops.aten.mul.Scalar, (node.args[0][0], math.nan))
            node.args = ((nan, *node.args[0][1:]),)
    broken.exported.graph_module.recompile()
    accuracy = quantization.accuracy(graph, broken, [inputs])
    assert math.isnan(accuracy.cosine) and accuracy.to_json()["cosine"] is None


def test_unknown_scheme_and_options_are_input_errors() -> None:
    model, inputs = gpt2.tiny()
    graph = capture(model, inputs)
    with pytest.raises(InputError, match="unknown quantization scheme"):
        quantization.quantize(graph, "int3")
    with pytest.raises(InputError, match="takes no group size"):
        quantization.quantize(graph, "dynamic", group_size=32)
    with pytest.raises(InputError, match="calibration"):
        quantization.quantize(graph, "static")


def test_cli_quantize_reports_accuracy_and_parity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "q.json"
    code = main(["quantize", "crossgraph.models.gpt2:tiny", "--scheme", "int4", "--group-size", "16",
                 "--targets", "onnx,jax", "--json", str(report), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "10 node(s) quantized" in out and "cosine" in out and "perplexity" in out
    data = json.loads(report.read_text())
    assert data["scheme"] == "int4" and data["targets"]["onnx"]["status"] == "pass"
    assert data["targets"]["jax"]["status"] == "pass" and data["verdict"]["status"] == "pass"
    assert 0.99 < data["accuracy"]["cosine"] <= 1.0
    assert (tmp_path / "out" / "model.onnx").exists() or any((tmp_path / "out").iterdir())


def test_cli_quantize_strict_fails_when_a_target_is_skipped(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from crossgraph.compiler import tensorrt

    monkeypatch.setattr(tensorrt, "unavailable", lambda: "no CUDA device")
    report = tmp_path / "q.json"
    argv = ["quantize", "crossgraph.models.mlp:tiny", "--scheme", "dynamic", "--targets", "eager,tensorrt",
            "--json", str(report)]
    assert main(argv) == 0, capsys.readouterr().out  # without --strict a skipped target does not fail it
    assert main([*argv, "--strict"]) == 1, capsys.readouterr().out
    data = json.loads(report.read_text())
    assert {t: r["status"] for t, r in data["targets"].items()} == {"eager": "pass", "tensorrt": "skipped"}
    assert data["verdict"] == {"status": "incomplete", "counts": {"pass": 1, "fail": 0, "error": 0, "skipped": 1},
                               "strict": True}


@pytest.mark.parametrize("argv, message", [
    (["--scheme", "int3"], "invalid choice"),
    (["--scheme", "int4", "--group-size", "24"], "power of two"),
    (["--scheme", "dynamic", "--group-size", "32"], "takes no group size"),
    (["--scheme", "static", "--observer", "median"], "unknown observer"),
])
def test_cli_quantize_bad_input_exits_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["quantize", "crossgraph.models.gpt2:tiny", "--targets", "onnx", *argv])
    assert code == 2
    assert message in capsys.readouterr().err


class _QuantizedTable(torch.nn.Module):
    """An embedding lookup in a table quantized like weight_only_linear's weights."""

    def __init__(self, bits: int, group: int, symmetric: bool, k: int) -> None:
        super().__init__()
        qweight, scales, zeros = quant.quantize_weight(torch.randn(50, k), bits, group, symmetric)
        self.register_buffer("qweight", qweight)
        self.register_buffer("scales", scales)
        self.register_buffer("zeros", zeros)
        self.settings = (k, bits, quant.storage_block(k, group))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.ops.crossgraph.weight_only_embedding(self.qweight, self.scales, self.zeros, ids, *self.settings)


@pytest.mark.parametrize("bits, group, symmetric, k", [
    (4, 0, True, 40), (4, 0, False, 40), (4, 16, False, 40), (4, 32, False, 96), (8, 0, True, 40),
    (8, 32, False, 40)])
def test_weight_only_embedding_on_onnx_and_jax(bits: int, group: int, symmetric: bool, k: int) -> None:
    """Per channel and grouped, padded past K or not, an odd number of 4-bit zero points (the ONNX lowering pads
    them to GatherBlockQuantized's even count): every target gathers exactly the reference's rows."""
    model = _QuantizedTable(bits, group, symmetric, k)
    ids = torch.randint(0, 50, (2, 7))
    graph = capture(model, (ids,))
    artifact = lower(graph, "onnx")
    assert [n.op_type for n in artifact.model.graph.node if n.domain == "com.microsoft"] == ["GatherBlockQuantized"]
    for target in (artifact, lower(graph, "jax")):
        assert torch.equal(torch.as_tensor(np.asarray(target(ids)[0])), model(ids))

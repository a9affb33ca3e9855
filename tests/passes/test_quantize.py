"""Quantization passes and calibration: what they rewrite, the integer math they store, and bad settings."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crossgraph.graphs import Graph, InputError, capture
from crossgraph.graphs import quant
from crossgraph.graphs.annotations import get
from crossgraph.graphs.quant import QUANT_OPS, QuantSpec
from crossgraph.models import gpt2, hf, llama
from crossgraph.passes import PassManager, calibrate
from crossgraph.passes.quantize import linears, quantize_dynamic, quantize_static, quantize_weight_only
from crossgraph.compiler.quantization import PREPARE

PASSES = {"quantize_int8_weight_only": "weight_only_linear", "quantize_int4_weight_only": "weight_only_linear",
          "quantize_dynamic_int8": "dynamic_quant_linear"}


class TwoLinears(nn.Module):
    """A biased and an unbiased linear, on 3-D input."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.up = nn.Linear(48, 40)
        self.down = nn.Linear(40, 24, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


def _two_linears() -> tuple[TwoLinears, Graph, tuple[torch.Tensor]]:
    model = TwoLinears().eval()
    x = (torch.randn(2, 5, 48),)
    return model, capture(model, x), x


def _state_bytes(graph: Graph) -> int:
    ep = graph.exported
    return sum(t.numel() * t.element_size() for t in [*ep.state_dict.values(), *ep.constants.values()])


def _quantized(graph: Graph, op: str) -> list[torch.fx.Node]:
    return [n for n in graph.fx.nodes if n.target is QUANT_OPS[op]]


@pytest.fixture(scope="module")
def prepared() -> dict[str, tuple[Graph, tuple[torch.Tensor, ...]]]:
    """Our and Hugging Face's GPT-2 and Llama tiny presets after the structural passes and cleanup."""
    out = {}
    for name, factory in {"gpt2": gpt2.tiny, "llama": llama.tiny, "hf_gpt2": hf.gpt2_tiny,
                          "hf_llama": hf.llama_tiny}.items():
        torch.manual_seed(0)  # Hugging Face's initialization draws from the global generator
        model, inputs = factory()
        out[name] = PassManager(PREPARE).run(capture(model, inputs)).graph, inputs
    return out


@pytest.mark.parametrize("model", ["gpt2", "llama", "hf_gpt2", "hf_llama"])
@pytest.mark.parametrize("name", list(PASSES))
def test_pass_replaces_every_linear_with_a_stored_weight(prepared: dict, model: str, name: str) -> None:
    graph, inputs = prepared[model]
    count = len(linears(graph))
    assert count >= 8  # q/k/v (fused or not), attention out, MLP, LM head over two layers
    out = PassManager([name]).run(graph).graph
    nodes = _quantized(out, PASSES[name])
    assert len(nodes) == count and not linears(out)
    assert all(get(n, QuantSpec) is not None for n in nodes)
    assert all(n.args[0].meta["val"].dim() == 3 for n in nodes)  # the linear's flatten and unflatten are gone
    assert _state_bytes(out) < _state_bytes(graph)  # the float weights the linears read are gone
    reference, got = graph(*inputs)[0], out(*inputs)[0]
    cosine = F.cosine_similarity(got.flatten().double(), reference.flatten().double(), dim=0)
    assert cosine > (0.98 if "int4" in name else 0.999), cosine  # int4: 0.991-0.996 over seeds


@pytest.mark.parametrize("dynamic", [False, True])
def test_quantized_linears_read_x_unflattened(dynamic: bool) -> None:
    """torch.export flattens x to [M, K] around each mm and unflattens the result; the quantized op takes x of any
    rank, so both views go (ONNX Runtime copied each), with a symbolic batch too."""
    model, x = TwoLinears().eval(), torch.randn(2, 5, 48)
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    graph = capture(model, (x,), dynamic_shapes=shapes)
    views = {torch.ops.aten.view.default, torch.ops.aten._unsafe_view.default, torch.ops.aten.reshape.default}
    assert sum(n.target in views for n in graph.fx.nodes) == 4
    out = quantize_dynamic(graph)
    assert not [n for n in out.fx.nodes if n.target in views]
    assert [tuple(n.args[0].meta["val"].shape)[1:] for n in _quantized(out, "dynamic_quant_linear")] == [(5, 48),
                                                                                                  (5, 40)]
    for batch in (2, 3) if dynamic else (2,):
        xb = torch.randn(batch, 5, 48)
        torch.testing.assert_close(out(xb)[0], model(xb), atol=0.05, rtol=0.05)


def test_weight_only_stores_what_the_op_dequantizes() -> None:
    """Per channel and grouped, symmetric or not: the graph computes x @ dequantize(quantize(W))^T + b."""
    model, graph, (x,) = _two_linears()
    for bits, group, symmetric in [(8, 0, True), (4, 16, False), (4, 32, True), (8, 16, False)]:
        out = quantize_weight_only(PassManager(PREPARE).run(graph).graph, bits, group, symmetric)
        expected = x
        for layer, act in ((model.up, torch.relu), (model.down, lambda t: t)):
            w = quant.dequantize_weight(*quant.quantize_weight(layer.weight.detach(), bits, group, symmetric),
                                        layer.in_features, bits)
            expected = act(F.linear(expected, w, layer.bias))
        torch.testing.assert_close(out(x)[0], expected, rtol=1e-5, atol=1e-6)
        spec = get(_quantized(out, "weight_only_linear")[0], QuantSpec)
        assert spec == QuantSpec(f"int{bits}_weight_only", bits, group, symmetric)


def test_int4_weights_take_an_eighth_of_the_bytes() -> None:
    model, inputs = gpt2.tiny()
    graph = PassManager(PREPARE).run(capture(model, inputs)).graph
    weights = sum(w.numel() * 4 for _, w in linears(graph))
    out = quantize_weight_only(graph, 4, 32, symmetric=True)
    stored = sum(_state_bytes_of(out, n) for n in _quantized(out, "weight_only_linear"))
    assert 0.125 * weights < stored < 0.2 * weights  # 4 bits of 32, plus one float scale per 32 weights


def _state_bytes_of(graph: Graph, node: torch.fx.Node) -> int:
    """Bytes of the stored tensors `node` reads (its qweight, scales, zero points)."""
    ep, total = graph.exported, 0
    for arg in node.all_input_nodes:
        spec = next((s for s in ep.graph_signature.input_specs if s.arg.name == arg.name), None)
        tensor = None if spec is None else ep.state_dict.get(spec.target, ep.constants.get(spec.target))
        if tensor is not None:
            total += tensor.numel() * tensor.element_size()
    return total


def test_dynamic_matches_onnx_integer_semantics() -> None:
    """The op quantizes x per tensor to uint8 (DynamicQuantizeLinear) and multiplies integers exactly."""
    model, graph, (x,) = _two_linears()
    out = quantize_dynamic(PassManager(PREPARE).run(graph).graph)
    model.requires_grad_(False)
    h = x
    for layer, act in ((model.up, torch.relu), (model.down, lambda t: t)):
        qw, w_scale = quant.quantize_weight_int8(layer.weight.detach().T)
        low, high = min(float(h.min()), 0.0), max(float(h.max()), 0.0)
        scale = (high - low) / 255
        zero = float(torch.tensor(-low / scale).round().clamp(0, 255))
        xq = (h / scale).round().add(zero).clamp(0, 255)
        acc = (xq.double() - zero) @ qw.double()  # exact integers
        h = acc.float() * (scale * w_scale)
        h = act(h if layer.bias is None else h + layer.bias)
    torch.testing.assert_close(out(x)[0], h, rtol=1e-5, atol=1e-5)


def test_calibration_uses_the_observed_range_of_each_linear_input() -> None:
    model, graph, (x,) = _two_linears()
    graph = PassManager(PREPARE).run(graph).graph
    batches = [(x,), (x * 2,)]
    found = calibrate(graph, batches, progress=False)
    assert set(found) == {n.name for n, _ in linears(graph)}
    first = linears(graph)[0][0]
    low, high = min(float((x * 2).min()), 0.0), max(float((x * 2).max()), 0.0)
    scale, zero = found[first.name]
    assert scale == pytest.approx((high - low) / 255, rel=1e-6)
    assert zero == round(-low / scale)
    histogram = calibrate(graph, batches, observer="histogram", progress=False)
    assert histogram[first.name][0] <= scale  # the histogram observer may clip outliers, never widen
    out = quantize_static(graph, found)
    spec = get(_quantized(out, "static_quant_linear")[0], QuantSpec)
    assert (spec.scheme, spec.activation_scale, spec.activation_zero_point) == ("static_int8", scale, zero)
    cosine = F.cosine_similarity(out(x)[0].flatten(), model(x).detach().flatten(), dim=0)
    assert cosine > 0.999


def test_calibration_shows_a_progress_bar_on_a_terminal_only(capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _, graph, x = _two_linears()
    calibrate(graph, [x, x, x])
    assert "calibrating" not in capsys.readouterr().err  # a log file gets no carriage-return spam
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    calibrate(graph, [x, x, x])
    err = capsys.readouterr().err
    assert "calibrating" in err and "3/3" in err


def test_static_covers_only_calibrated_linears() -> None:
    _, graph, x = _two_linears()
    found = calibrate(graph, [x], progress=False)
    first = linears(graph)[0][0].name
    out = quantize_static(graph, {first: found[first]})
    assert len(_quantized(out, "static_quant_linear")) == 1 and len(linears(out)) == 1


@pytest.mark.parametrize("call, message", [
    (lambda g: quantize_weight_only(g, 3), "4 or 8 bits"),
    (lambda g: quantize_weight_only(g, 4, 24), "power of two"),
    (lambda g: quantize_weight_only(g, 4, 8), "power of two"),
    (lambda g: quantize_static(g, {"no_such_node": (0.1, 0)}), "calibrate the same graph"),
    (lambda g: calibrate(g, [], progress=False), "at least one batch"),
    (lambda g: calibrate(g, [], observer="median", progress=False), "unknown observer"),
])
def test_bad_settings_are_input_errors(call, message: str) -> None:
    _, graph, _ = _two_linears()
    with pytest.raises(InputError, match=message):
        call(graph)


def test_annotations_survive_save_and_load(tmp_path) -> None:
    _, graph, (x,) = _two_linears()
    out = quantize_weight_only(graph, 4, 16, symmetric=False)
    out.save(tmp_path / "q.pt2")
    loaded = Graph.load(tmp_path / "q.pt2")
    specs = [get(n, QuantSpec) for n in loaded.fx.nodes if get(n, QuantSpec) is not None]
    assert specs == [QuantSpec("int4_weight_only", 4, 16, False)] * 2
    torch.testing.assert_close(loaded(x)[0], out(x)[0])


def test_quant_spec_refuses_an_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="unknown quantization scheme"):
        QuantSpec("int3")


@pytest.mark.parametrize("bits", [4, 8])
def test_pack_unpack_round_trip(bits: int) -> None:
    values = torch.randint(0, 2**bits, (3, 5, 33), dtype=torch.uint8)
    assert torch.equal(quant.unpack(quant.pack(values, bits), bits, 33), values)


@pytest.mark.parametrize("bits, group, symmetric", [(4, 0, True), (4, 16, False), (8, 32, True), (8, 0, False)])
def test_weight_error_is_at_most_half_a_step(bits: int, group: int, symmetric: bool) -> None:
    w = torch.randn(24, 40)
    qweight, scales, zeros = quant.quantize_weight(w, bits, group, symmetric)
    error = (quant.dequantize_weight(qweight, scales, zeros, 40, bits) - w).abs()
    block = quant.storage_block(40, group)
    step = scales.repeat_interleave(block, dim=1)[:, :40]
    assert (error <= step / 2 + 1e-6).all()


def test_tied_embedding_and_head_share_one_quantized_table() -> None:
    """GPT-2 reads wte as its embedding and, transposed, as its LM head: weight-only quantization stores it
    once, and the float table leaves the program."""
    model, inputs = gpt2.tiny()
    graph = PassManager(PREPARE).run(capture(model, inputs)).graph
    before = _state_bytes(graph)
    out = quantize_weight_only(graph, 4, 32, symmetric=False)  # in place: a pass function, not a Pass
    lookup = _quantized(out, "weight_only_embedding")
    head = [n for n in _quantized(out, "weight_only_linear") if n.args[1] is lookup[0].args[0]]
    assert len(lookup) == 1 and len(head) == 1 and head[0].args[2:4] == lookup[0].args[1:3]
    assert "wte.weight" not in out.exported.state_dict
    vocab, width = model.params["wte"]["weight"].shape
    assert _state_bytes(out) < before - 0.8 * vocab * width * 4

"""The localizer always answers: ONNX probes keep their output names unique (constant-folded and repeated
values), a probe that cannot be built is read in halves, then op by op on eager's inputs ("isolated"), then by the
graph's outputs, and first_divergent_node never raises where both sides run. Intermediates are judged against the
float64 run of the graph where the output judge would be, so a large input does not get an early node blamed for
float32's own noise. Planted bugs (monkeypatched here, never in the product) hit one node only.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from crossgraph.compiler import Tolerance, localize
from crossgraph.compiler.localize import candidate_values, compare_values, first_divergent_node
from crossgraph.compiler.lower import lower
from crossgraph.compiler.pipeline import Pipelines, passes_for
from crossgraph.graphs import Graph, capture
from crossgraph.models import gpt2, mlp

GELU = torch.ops.aten.gelu.default


class MixerBlock(nn.Module):
    def __init__(self, tokens: int, dim: int) -> None:
        super().__init__()
        self.n1 = nn.LayerNorm(dim)
        self.tok = nn.Linear(tokens, tokens)
        self.n2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.tok(self.n1(x).transpose(1, 2)).transpose(1, 2)
        return x + self.fc2(nn.functional.gelu(self.fc1(self.n2(x))))


class Mixer2(nn.Module):
    def __init__(self, tokens: int = 16, dim: int = 32, depth: int = 2) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[MixerBlock(tokens, dim) for _ in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).mean(dim=1)


@pytest.fixture(scope="module")
def mixer() -> tuple[Pipelines, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    model = Mixer2().eval()
    graph = capture(model, (torch.randn(3, 16, 32),))
    # values of +-1e4 and 0, as drawn inputs hold: the final mean cancels, in float32 on every runtime
    big = (torch.randint(-1, 2, (3, 16, 32), generator=torch.Generator().manual_seed(0)).float() * 1e4,)
    return Pipelines(graph), big


def after_passes(pipelines: Pipelines, target: str) -> Graph:
    return pipelines.run(passes_for(target, None))[0]


@pytest.fixture(scope="module")
def mlp_tiny() -> tuple[Graph, tuple[torch.Tensor, ...]]:
    model, inputs = mlp.tiny()
    return capture(model, inputs), inputs


def plant_onnx_bias_gelu_once(monkeypatch: pytest.MonkeyPatch, which: int = 1, of: int = 2) -> None:
    """The ONNX translation of crossgraph.bias_gelu uses a wrong constant (0.5 -> 0.45 in front of the erf form)
    for one node: the `which`-th of every `of` translations (the exporter translates nodes in order, once each)."""
    pytest.importorskip("onnxscript")
    from onnxscript import ir
    from onnxscript import opset18 as op

    from crossgraph.compiler import onnx_dialect
    bias_gelu = torch.ops.crossgraph.bias_gelu.default
    right = onnx_dialect.TRANSLATIONS[bias_gelu]
    calls = itertools.count()

    def planted(x: Any, bias: Any, *args: Any, **kwargs: Any) -> Any:
        if next(calls) % of != which:
            return right(x, bias, *args, **kwargs)
        y = op.Add(x, bias)
        c = op.Constant(value=ir.tensor(0.45, dtype=x.dtype))
        return op.Mul(op.Mul(c, y), op.Add(op.Constant(value=ir.tensor(1.0, dtype=x.dtype)),
                                           op.Erf(op.Mul(y, op.Constant(value=ir.tensor(0.7071067811865476,
                                                                                         dtype=x.dtype))))))

    monkeypatch.setitem(onnx_dialect.TRANSLATIONS, bias_gelu, planted)


def plant_jax_gelu_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The jax translation of aten.gelu scales by a wrong constant on its second call (the second block)."""
    from crossgraph.compiler.jaxlower import registry
    right = registry.lookup(GELU)
    calls = itertools.count()

    def planted(x: Any, approximate: str = "none") -> Any:
        out = right.fn(x, approximate=approximate)
        return out * 1.01 if next(calls) % 2 == 1 else out

    monkeypatch.setitem(registry._TABLE, GELU, registry.Translation(planted))


# ---- ONNX output names ---------------------------------------------------------------------------------------
def test_name_outputs_keeps_names_unique() -> None:
    """An initializer returned under a name another initializer holds, and one value returned twice: the
    exporter's own renaming raises (or writes a model ONNX Runtime rejects); name_outputs defines each once."""
    pytest.importorskip("onnxruntime")
    import onnx
    import onnx_ir as ir
    import onnxruntime as ort

    from crossgraph.compiler.onnx_rt import name_outputs

    def model() -> ir.Model:
        f = ir.TensorType(ir.DataType.FLOAT)
        x = ir.Value(name="x", type=f, shape=ir.Shape([2]))
        a = ir.Value(name="a", type=f, shape=ir.Shape([2]), const_value=ir.tensor(np.ones(2, np.float32), name="a"))
        b = ir.Value(name="b", type=f, shape=ir.Shape([2]),
                     const_value=ir.tensor(np.full(2, 2.0, np.float32), name="b"))
        add = ir.Node("", "Add", [x, b])
        add.outputs[0].name = "s2"  # an inner value holding a name an output wants
        double = ir.Node("", "Add", [add.outputs[0], add.outputs[0]])
        double.outputs[0].name = "d"
        for v in (add.outputs[0], double.outputs[0]):
            v.type, v.shape = f, ir.Shape([2])
        graph = ir.Graph([x], [a, double.outputs[0], double.outputs[0]], nodes=[add, double], initializers=[a, b],
                         opset_imports={"": 18}, name="g")
        return ir.Model(graph, ir_version=10)

    from torch.onnx._internal.exporter import _ir_passes
    with pytest.raises(ValueError, match="initializer"):
        _ir_passes.rename_outputs(model(), ["b", "s1", "s2"])  # what the exporter did with output_names
    fixed = model()
    name_outputs(fixed, ["b", "s1", "s2"])
    proto = ir.serde.serialize_model(fixed)
    onnx.checker.check_model(proto)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["b", "s1", "s2"]
    one, s1, s2 = session.run(None, {"x": np.array([1.0, -1.0], np.float32)})
    np.testing.assert_array_equal(one, [1.0, 1.0])
    np.testing.assert_array_equal(s1, [6.0, 2.0])
    np.testing.assert_array_equal(s2, s1)


# ---- the mixer at a large input scale ------------------------------------------------------------------------
def test_mixer_onnx_probe_at_a_large_scale_reads_every_node(mixer) -> None:
    """The probe returns the folded weight expand beside another initializer of its name (it raised
    "Cannot rename initializer"); at values ~1e4 the final mean's float32 cancellation, which eager has too,
    is not blamed on it (the float64-oracle rule), while the tolerance rule alone would."""
    pipelines, big = mixer
    graph = after_passes(pipelines, "onnx")
    reference = localize.reference_values(graph, big)
    notes: list[str] = []
    nodes = localize.comparable_nodes(graph, reference)
    assert len(candidate_values(graph, "onnx", big, nodes, notes=notes)) == len(nodes) and notes == []  # one probe
    assert first_divergent_node(graph, "onnx", big) is None
    found = localize.first_divergence(graph, "onnx", big, localize.TolerancePolicy(), reference)  # no oracle
    assert found is not None and found.node.name == "mean"


def test_planted_onnx_bug_in_one_node_is_localized_at_a_large_scale(mixer, monkeypatch) -> None:
    plant_onnx_bias_gelu_once(monkeypatch)
    pipelines, big = mixer
    found = first_divergent_node(after_passes(pipelines, "onnx"), "onnx", big)
    assert found["node"] == "bias_gelu_default_1" and found["inputs_ok"] is True
    assert found["method"] == "probe" and found["rule"] == "float64-oracle" and "note" not in found


def test_planted_jax_bug_in_one_node_is_localized_at_a_large_scale(mixer, monkeypatch) -> None:
    plant_jax_gelu_once(monkeypatch)
    pipelines, big = mixer
    found = first_divergent_node(after_passes(pipelines, "jax"), "jax", big)
    assert found["node"] == "gelu_1" and found["inputs_ok"] is True
    assert found["method"] == "interpreter" and found["rule"] == "float64-oracle"


def test_planted_inductor_bug_is_localized_at_a_large_scale(mixer, monkeypatch) -> None:
    """A wrong gelu decomposition (one AOT compile): the first gelu, every node before it agreeing at ~1e4."""
    import torch._inductor.config
    from torch._inductor.decomposition import select_decomp_table
    monkeypatch.setitem(select_decomp_table(), GELU, lambda x, approximate="none": x * torch.sigmoid(1.702 * x))
    pipelines, big = mixer
    with torch._inductor.config.patch(force_disable_caches=True):  # a cached kernel would predate the plant
        found = first_divergent_node(after_passes(pipelines, "inductor"), "inductor", big)
    assert found["node"] == "gelu" and found["inputs_ok"] is True and found["method"] == "probe"


# ---- quantized and fused graphs ------------------------------------------------------------------------------
def test_quantized_gpt2_probe_builds_and_runs_on_onnx() -> None:
    """Dynamic int8 GPT-2 after the ONNX pipeline (int8 linears, fused attention, add + layer norm): every
    comparable node is read by one probe, and the localizer answers (no node diverges)."""
    from crossgraph.compiler.quantization import quantize
    model, inputs = gpt2.tiny()
    graph = after_passes(Pipelines(quantize(capture(model, inputs), "dynamic", progress=False)), "onnx")
    ops = {str(n.target) for n in graph.fx.nodes}
    assert "crossgraph.dynamic_quant_linear.default" in ops and "crossgraph.attention.default" in ops
    nodes = localize.comparable_nodes(graph, localize.reference_values(graph, inputs))
    notes: list[str] = []
    values = candidate_values(graph, "onnx", inputs, nodes, notes=notes)
    assert set(values) == {n.name for n in nodes} and notes == []
    assert all(isinstance(v, np.ndarray) for v in values.values())
    assert first_divergent_node(graph, "onnx", inputs) is None


# ---- fallbacks -----------------------------------------------------------------------------------------------
def failing_lower(monkeypatch: pytest.MonkeyPatch, refuse: Any) -> list[int]:
    """localize's lowering raises for graphs `refuse(graph)` picks; returns the output counts of those lowered."""
    lowered: list[int] = []

    def fake(graph: Graph, target: str) -> Any:
        if refuse(graph):
            raise RuntimeError(f"planted: cannot lower {len(graph.output_names)} outputs")
        lowered.append(len(graph.output_names))
        return lower(graph, target)

    monkeypatch.setattr(localize, "lower", fake)
    return lowered


def plant_onnx_gelu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every aten.gelu exported to ONNX as quick gelu, x * sigmoid(1.702 x) (off by up to ~2e-2)."""
    pytest.importorskip("onnxscript")
    from onnxscript import ir
    from onnxscript import opset18 as op

    from crossgraph.compiler import onnx_dialect

    def quick_gelu(x: Any, approximate: str = "none") -> Any:
        return op.Mul(x, op.Sigmoid(op.Mul(x, op.Constant(value=ir.tensor(1.702, dtype=x.dtype)))))

    monkeypatch.setitem(onnx_dialect.TRANSLATIONS, GELU, quick_gelu)


def test_big_probes_that_fail_are_split(mlp_tiny, monkeypatch) -> None:
    plant_onnx_gelu(monkeypatch)
    lowered = failing_lower(monkeypatch, lambda g: len(g.output_names) > 3)
    found = first_divergent_node(mlp_tiny[0], "onnx", mlp_tiny[1])
    assert found["node"] == "gelu" and found["inputs_ok"] is True and found["method"] == "probe"
    assert "probe of" in found["note"] and max(lowered) <= 3


def test_a_target_whose_probes_never_build_is_read_op_by_op(mlp_tiny, monkeypatch) -> None:
    """No probe at all (any graph with more outputs than the model's raises): each op alone, on eager's inputs."""
    plant_onnx_gelu(monkeypatch)
    graph, inputs = mlp_tiny
    failing_lower(monkeypatch, lambda g: g.name == graph.name and len(g.output_names) > 1)
    found = first_divergent_node(graph, "onnx", inputs)
    assert found["node"] == "gelu" and found["method"] == "isolated" and found["inputs_ok"] is True
    assert "isolation" in found["note"] and "the op run alone" in found["message"]


def test_when_nothing_but_the_graph_lowers_its_outputs_answer(mlp_tiny, monkeypatch) -> None:
    plant_onnx_gelu(monkeypatch)
    graph, inputs = mlp_tiny
    failing_lower(monkeypatch, lambda g: g is not graph)
    found = first_divergent_node(graph, "onnx", inputs)
    assert found["method"] == "outputs" and found["node"] is not None and found["inputs_ok"] is False
    assert "could not be read" in found["note"]


def test_first_divergent_node_never_raises(mlp_tiny, monkeypatch) -> None:
    graph, inputs = mlp_tiny
    failing_lower(monkeypatch, lambda g: True)
    found = first_divergent_node(graph, "onnx", inputs)
    assert found["node"] is None and found["message"].startswith("could not localize: onnx fails on the graph")
    monkeypatch.setattr(localize, "_locate", lambda *a: 1 / 0)
    assert "ZeroDivisionError" in first_divergent_node(graph, "jax", inputs)["message"]


def test_candidate_values_reads_requested_nodes_by_name_or_node(mlp_tiny) -> None:
    graph, inputs = mlp_tiny
    reference = localize.reference_values(graph, inputs)
    gelu = next(n for n in graph.fx.nodes if n.target is GELU)
    for target in ("jax", "onnx"):
        values = candidate_values(graph, target, inputs, [gelu, "addmm"])
        assert set(values) == {"gelu", "addmm"}
        np.testing.assert_allclose(values["gelu"], reference["gelu"].numpy(), rtol=1e-4, atol=1e-5)


def test_quantized_graph_without_float64_falls_back_to_tolerance(mlp_tiny, monkeypatch) -> None:
    """A graph that does not run in float64 is judged by the tolerance rule, and the answer says so."""
    plant_onnx_gelu(monkeypatch)
    from crossgraph.compiler import oracle
    monkeypatch.setattr(oracle, "graph_values", lambda *a: (_ for _ in ()).throw(RuntimeError("no float64")))
    found = first_divergent_node(mlp_tiny[0], "onnx", mlp_tiny[1])
    assert found["node"] == "gelu" and found["rule"] == "tolerance" and "float64" in found["note"]


def test_compare_values_by_the_oracle_rule() -> None:
    tol = Tolerance(1e-5, 1e-4)
    o = np.linspace(-1e4, 1e4, 128)
    ref = (o + np.where(np.arange(128) % 2, 1e-2, -1e-2)).astype(np.float32)  # eager's own float32 error: 1e-2
    assert compare_values(ref, ref + np.float32(5e-2), tol, oracle=o) is None  # within 8x of eager's error
    bad = ref.copy()
    bad[7] += 1.0
    abs_err, _, worst, detail = compare_values(ref, bad, tol, oracle=o)
    assert worst == [7] and "further from float64" in detail and "float64" in detail
    nan = np.array([np.nan, 1.0], np.float32)
    assert compare_values(nan, nan.copy(), tol, oracle=np.array([np.nan, 1.0])) is None  # NaN == NaN inside

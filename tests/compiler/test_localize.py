"""first_divergent_node: a lowering broken on purpose in one op (planted here with monkeypatch, never in the
product) is found at that op's node, with the model's source line, on jax, onnx and Inductor.

The planted bug is the classic "quick gelu" mix-up: x * sigmoid(1.702 x) where gelu was asked for (off by up to
~2e-2, far outside float32's tolerance).
"""

from __future__ import annotations

import inspect
import json
from typing import Any

import numpy as np
import pytest
import torch

from crossgraph.compiler import Tolerance, localize
from crossgraph.compiler.localize import compare_values, first_divergent_node, reference_values
from crossgraph.compiler.lower import lower
from crossgraph.compiler.probe import user_outputs, with_outputs
from crossgraph.graphs import Graph, InputError, capture
from crossgraph.models import gpt2, mlp

GELU = torch.ops.aten.gelu.default


def quick_gelu_torch(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def plant_jax(monkeypatch: pytest.MonkeyPatch, fn: Any = None) -> None:
    """Replace the jax translation of aten.gelu (by default with quick gelu)."""
    import jax

    from crossgraph.compiler.jaxlower import registry
    registry.lookup(GELU)  # loads the table
    quick = fn or (lambda x, approximate="none": x * jax.nn.sigmoid(1.702 * x))
    monkeypatch.setitem(registry._TABLE, GELU, registry.Translation(quick))


def plant_onnx(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give torch.onnx's exporter a wrong translation of aten.gelu through the target's custom table."""
    pytest.importorskip("onnxscript")
    from onnxscript import ir
    from onnxscript import opset18 as op

    from crossgraph.compiler import onnx_dialect

    def quick_gelu(x: onnx_dialect.Value, approximate: str = "none") -> onnx_dialect.Value:
        return op.Mul(x, op.Sigmoid(op.Mul(x, op.Constant(value=ir.tensor(1.702, dtype=x.dtype)))))

    monkeypatch.setitem(onnx_dialect.TRANSLATIONS, GELU, quick_gelu)


def source_line(fn: Any, text: str) -> int:
    """The line number of the first line of `fn`'s source that contains `text`."""
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


@pytest.fixture(scope="module")
def gpt2_tiny() -> tuple[Graph, tuple[torch.Tensor, ...]]:
    model, inputs = gpt2.tiny()
    return capture(model, inputs), inputs


@pytest.fixture(scope="module")
def mlp_tiny() -> tuple[Graph, tuple[torch.Tensor, ...]]:
    model, inputs = mlp.tiny()
    return capture(model, inputs), inputs


def assert_gelu_of_gpt2_mlp(found: dict[str, Any] | None) -> None:
    assert found is not None
    assert found["node"] == "gelu" and found["op"] == "aten.gelu.default"  # the first block's gelu
    assert found["provenance"]["file"].endswith("models/gpt2.py")
    assert found["provenance"]["line"] == source_line(gpt2.mlp, "F.gelu(")
    assert found["inputs_ok"] is True and found["max_abs_err"] > found["atol"]
    assert "gelu" in found["message"] and "the error starts here" in found["message"]
    json.dumps(found, allow_nan=False)


def test_agreeing_jax_lowering_has_no_divergent_node(gpt2_tiny) -> None:
    assert first_divergent_node(gpt2_tiny[0], "jax", gpt2_tiny[1]) is None


def test_planted_jax_bug_is_localized_to_its_node(gpt2_tiny, monkeypatch) -> None:
    plant_jax(monkeypatch)
    graph, inputs = gpt2_tiny
    found = first_divergent_node(graph, "jax", inputs)
    assert_gelu_of_gpt2_mlp(found)
    assert len(found["worst_index"]) == 3


def test_planted_onnx_bug_is_localized_through_one_probe(gpt2_tiny, monkeypatch) -> None:
    plant_onnx(monkeypatch)
    assert_gelu_of_gpt2_mlp(first_divergent_node(gpt2_tiny[0], "onnx", gpt2_tiny[1]))


def test_probes_are_scanned_chunk_by_chunk(mlp_tiny, monkeypatch) -> None:
    """With two intermediates per probe, the first gelu is in the second probe; its input (addmm), checked by
    the first, agreed."""
    plant_onnx(monkeypatch)
    monkeypatch.setattr(localize, "PROBE_CHUNK", 2)
    lowered = []
    monkeypatch.setattr(localize, "lower", lambda graph, target: lowered.append(graph) or lower(graph, target))
    found = first_divergent_node(mlp_tiny[0], "onnx", mlp_tiny[1])
    assert found["node"] == "gelu" and found["inputs_ok"] is True
    assert [g.output_names for g in lowered] == [["output", "permute", "addmm"], ["output", "gelu", "permute_1"]]
    assert found["provenance"]["line"] == source_line(mlp.apply, "x = act(x)")


def test_planted_inductor_decomposition_is_localized(mlp_tiny, monkeypatch) -> None:
    """Inductor decomposes gelu before lowering: a wrong decomposition is a wrong kernel (one AOT compile)."""
    import torch._inductor.config
    from torch._inductor.decomposition import select_decomp_table
    monkeypatch.setitem(select_decomp_table(), GELU, quick_gelu_torch)
    with torch._inductor.config.patch(force_disable_caches=True):  # a cached kernel would predate the plant
        found = first_divergent_node(mlp_tiny[0], "inductor", mlp_tiny[1])
    assert found["node"] == "gelu" and found["op"] == "aten.gelu.default" and found["inputs_ok"] is True
    assert found["provenance"]["file"].endswith("models/mlp.py")


@pytest.mark.parametrize("target", ["eager", "flax"])
def test_targets_without_intermediates_are_input_errors(mlp_tiny, target) -> None:
    with pytest.raises(InputError, match="cannot localize"):
        first_divergent_node(mlp_tiny[0], target, mlp_tiny[1])


def test_probe_returns_intermediates_with_a_valid_signature(mlp_tiny) -> None:
    graph, inputs = mlp_tiny
    reference = reference_values(graph, inputs)
    nodes = [n for n in graph.fx.nodes if n.op == "call_function"]
    probe = with_outputs(graph, nodes)
    probe.exported.validate()
    names = user_outputs(probe)
    assert names[0] == "addmm_2" and len(names) == len(nodes) == len(probe.output_names)  # no duplicate output
    for name, value in zip(names, probe(*inputs)):
        torch.testing.assert_close(value, reference[name])
    assert len(graph.output_names) == 1  # the original is untouched


def test_compare_values_rules() -> None:
    tol = Tolerance(1e-5, 1e-4)
    ref = np.array([1.0, -np.inf, np.nan], dtype=np.float32)
    assert compare_values(ref, ref.copy(), tol) is None  # the same NaN and Inf agree
    abs_err, _, worst, detail = compare_values(ref, np.array([np.nan, -np.inf, np.nan]), tol)
    assert worst == [0] and "NaN or Inf where the reference is finite" in detail and np.isnan(abs_err)
    assert compare_values(ref, np.array([1.0, np.inf, np.nan]), tol)[2] == [1]
    assert "shape" in compare_values(ref, ref[:2], tol)[3]


def plant_shifted_layer_norm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shift the first output of the jax translation of native_layer_norm, which returns (out, mean, rstd)."""
    from crossgraph.compiler.jaxlower import registry
    norm = torch.ops.aten.native_layer_norm.default
    right = registry.lookup(norm)

    def shifted(*args: Any) -> Any:
        out, mean, rstd = right.fn(*args)
        return out + 1e-3, mean, rstd

    monkeypatch.setitem(registry._TABLE, norm, registry.Translation(shifted))


def test_an_output_of_a_multi_output_op_blames_the_op(monkeypatch: pytest.MonkeyPatch,
                                                       gpt2_tiny: tuple[Graph, tuple[torch.Tensor, ...]]) -> None:
    """native_layer_norm is compared through its getitems; a wrong `out` names the layer norm and its output
    index, not the getitem (whose own input, a tuple, is never compared)."""
    plant_shifted_layer_norm(monkeypatch)
    graph, inputs = gpt2_tiny
    found = first_divergent_node(graph, "jax", inputs)
    assert found["op"] == "aten.native_layer_norm.default" and found["inputs_ok"]
    assert "output 0:" in found["message"] and found["provenance"]["file"].endswith("models/gpt2.py")

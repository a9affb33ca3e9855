"""reduce(): a graph broken on one target by a planted lowering bug (monkeypatch, never the product) is cut down
to a few ops that still fail, and the script it writes reproduces the failure (exit 1), and stops reproducing it
(exit 0) once the bug is gone. The scripts run in-process with runpy, where the bug is planted."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import torch

from crossgraph.compiler import reduce as reduce_module
from crossgraph.compiler.reduce import NothingToReduce, reduce
from crossgraph.graphs import Graph, InputError, capture
from crossgraph.models import gpt2, mlp
from test_localize import plant_jax, plant_onnx, plant_shifted_layer_norm, source_line


@pytest.fixture(scope="module")
def gpt2_tiny() -> tuple[Graph, tuple[torch.Tensor, ...]]:
    model, inputs = gpt2.tiny()
    return capture(model, inputs), inputs


def run_script(path: Path) -> int:
    """Run a written repro as `python path` would, in this process; its exit code."""
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(path), run_name="__main__")
    return exited.value.code


def ops(graph: Graph) -> list[str]:
    return [str(n.target) for n in graph.fx.nodes if n.op == "call_function"]


def test_planted_jax_bug_reduces_to_the_gelu_and_the_script_reproduces(gpt2_tiny, monkeypatch, tmp_path,
                                                                        capsys) -> None:
    plant_jax(monkeypatch)
    graph, inputs = gpt2_tiny
    reduction = reduce(graph, "jax", inputs)
    assert ops(reduction.graph) == ["aten.gelu.default"] and reduction.remaining_nodes == 1
    assert reduction.original_nodes == len(ops(graph)) and reduction.steps == 1
    assert "ending at node 'gelu'" in reduction.message and "out of tolerance" in reduction.message
    (node,) = [n for n in reduction.graph.fx.nodes if n.op == "call_function"]
    assert reduction.graph.provenance(node).line == source_line(gpt2.mlp, "F.gelu(")  # the copy keeps its source
    script = reduction.write_script(tmp_path / "repro.py")
    text = script.read_text()
    assert "torch.ops.aten.gelu.default" in text and 'TARGET = "jax"' in text
    assert not script.with_suffix(".pt").exists()  # the 8 KiB input is embedded
    assert run_script(script) == 1 and "reproduced: output 0 on jax" in capsys.readouterr().out
    monkeypatch.undo()
    assert run_script(script) == 0 and "not reproduced" in capsys.readouterr().out


def test_planted_onnx_bug_reduces_and_large_tensors_go_beside_the_script(gpt2_tiny, monkeypatch, tmp_path) -> None:
    plant_onnx(monkeypatch)
    reduction = reduce(gpt2_tiny[0], "onnx", gpt2_tiny[1])
    assert reduction.remaining_nodes <= 4 and "aten.gelu.default" in ops(reduction.graph)
    monkeypatch.setattr(reduce_module, "INLINE_BYTES", 0)
    script = reduction.write_script(tmp_path / "repro_onnx.py")
    assert script.with_suffix(".pt").exists() and "stored('input_0')" in script.read_text()
    assert run_script(script) == 1


def test_pinned_weights_become_constants_and_activations_inputs(monkeypatch, tmp_path) -> None:
    """A wrong addmm keeps its bias and transposed weight as constants (buffers), its activation as the input."""
    from crossgraph.compiler.jaxlower import registry
    addmm = registry.lookup(torch.ops.aten.addmm.default)
    monkeypatch.setitem(registry._TABLE, torch.ops.aten.addmm.default,
                        registry.Translation(lambda *args, **kwargs: addmm.fn(*args, **kwargs) + 1e-3))
    model, inputs = mlp.tiny()
    reduction = reduce(capture(model, inputs), "jax", inputs)
    assert ops(reduction.graph) == ["aten.addmm.default"] and reduction.graph.input_names == ["inputs_0"]
    assert sorted(dict(reduction.module.named_buffers())) == ["c_p_layers_0_bias", "c_permute"]
    assert run_script(reduction.write_script(tmp_path / "repro.py")) == 1


def test_an_exception_is_reduced_to_the_op_that_raises(gpt2_tiny, monkeypatch, tmp_path, capsys) -> None:
    """No node can be compared when the lowering raises: the shortest failing prefix is found by bisection."""
    def broken(x, approximate="none"):
        raise ZeroDivisionError("planted")

    plant_jax(monkeypatch, broken)
    reduction = reduce(gpt2_tiny[0], "jax", gpt2_tiny[1])
    assert ops(reduction.graph) == ["aten.gelu.default"] and reduction.expected_error == "ZeroDivisionError"
    assert reduction.steps <= 12
    assert run_script(reduction.write_script(tmp_path / "repro.py")) == 1
    assert "raised ZeroDivisionError: planted" in capsys.readouterr().out


def test_nan_where_eager_is_finite_is_a_failure(gpt2_tiny, monkeypatch) -> None:
    plant_jax(monkeypatch, lambda x, approximate="none": x / 0.0 - x / 0.0)
    reduction = reduce(gpt2_tiny[0], "jax", gpt2_tiny[1])
    assert reduction.remaining_nodes == 1 and "NaN or Inf" in reduction.message


def test_step_budget_keeps_the_smallest_failure_found(gpt2_tiny, monkeypatch) -> None:
    def broken(x, approximate="none"):
        raise ZeroDivisionError("planted")

    plant_jax(monkeypatch, broken)
    reduction = reduce(gpt2_tiny[0], "jax", gpt2_tiny[1], max_steps=2)
    assert reduction.steps == 2 and "stopped after 2 attempts" in reduction.message
    assert reduction.remaining_nodes <= reduction.original_nodes


def test_a_graph_that_agrees_has_nothing_to_reduce() -> None:
    model, inputs = mlp.tiny()
    with pytest.raises(NothingToReduce, match="does not fail on jax"):
        reduce(capture(model, inputs), "jax", inputs)
    with pytest.raises(InputError, match="cannot reduce"):
        reduce(capture(model, inputs), "flax", inputs)


def test_a_divergence_in_a_multi_output_op_reduces(gpt2_tiny, monkeypatch) -> None:
    """The first divergent value is a getitem of native_layer_norm: the cut keeps that one tensor output (it
    crashed on the op's tuple once localization named the op)."""
    plant_shifted_layer_norm(monkeypatch)
    graph, inputs = gpt2_tiny
    reduction = reduce(graph, "jax", inputs)
    assert "aten.native_layer_norm.default" in ops(reduction.graph) and reduction.remaining_nodes <= 4

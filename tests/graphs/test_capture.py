"""capture(): functional models, nn.Modules and Hugging Face models into core-ATen Graphs; readable failures."""

import dataclasses

import pytest
import torch
from hypothesis import given, strategies as st

from crossgraph.graphs import CaptureError, InputError, Provenance, capture, flatten_tree
from crossgraph.graphs.capture import KEPT_OPS
from torch.export import Dim

from crossgraph.models import gpt2, hf, mlp
from fixtures import specs


def test_functional_model_parameters_are_named_by_tree_path() -> None:
    model, inputs = mlp.tiny()
    graph = capture(model, inputs)
    assert sorted(graph.parameters()) == ["layers.0.bias", "layers.0.weight", "layers.1.bias",
                                          "layers.1.weight", "layers.2.bias", "layers.2.weight"]
    assert graph.input_names == ["x"] and graph.output_names == ["output"]
    torch.testing.assert_close(graph(*inputs)[0], model(*inputs))


def test_graph_is_core_aten() -> None:
    """Every op is core ATen (or one crossgraph keeps whole on purpose)."""
    graph = capture(*gpt2.tiny())
    for node in graph.fx.nodes:
        if node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload):
            assert torch.Tag.core in node.target.tags or node.target in KEPT_OPS, node.target


def test_provenance_names_the_source_function_and_line() -> None:
    graph = capture(*gpt2.tiny())
    provs = [graph.provenance(n) for n in graph.fx.nodes if n.op == "call_function"]
    assert all(isinstance(p, Provenance) for p in provs)
    softmax = next(n for n in graph.fx.nodes if n.target == torch.ops.aten._softmax.default)
    prov = graph.provenance(softmax)
    assert prov.file.endswith("gpt2.py") and prov.function == "attention" and "softmax" in prov.code


def test_nn_module_provenance_has_module_path() -> None:
    model, inputs = specs.two_outputs()
    graph = capture(model, inputs)
    addmm = next(n for n in graph.fx.nodes if n.target == torch.ops.aten.addmm.default)
    assert graph.provenance(addmm).module_path == "proj"
    assert graph.output_names == ["hidden", "pooled"]


def test_hugging_face_model_output_is_flattened_to_named_outputs() -> None:
    model, inputs = specs.hf_gpt2()
    graph = capture(model, inputs)
    assert graph.output_names == ["last_hidden_state"]
    assert graph.constant_kwargs == {"use_cache": False}
    with torch.no_grad():
        expected = model(*inputs, use_cache=False).last_hidden_state
    torch.testing.assert_close(graph(*inputs)[0], expected)


@given(batch=st.integers(1, 4), seed=st.integers(0, 1000))
def test_functional_capture_matches_apply(batch: int, seed: int) -> None:
    config = dataclasses.replace(mlp.MLPConfig.tiny(), activation="tanh")
    model = mlp.model(config, seed)
    inputs = mlp.example_inputs(config, batch, seed)
    torch.testing.assert_close(capture(model, inputs)(*inputs)[0], model(*inputs))


def test_data_dependent_branch_raises_capture_error_naming_the_line() -> None:
    with pytest.raises(CaptureError) as info:
        capture(*specs.data_dependent())
    text = str(info.value)
    assert "data-dependent control flow" in text and "if x.sum() > 0:" in text and "torch.cond" in text


def test_dynamic_shapes_by_name_and_bad_specs() -> None:
    model, inputs = mlp.tiny()
    batch = torch.export.Dim("batch", min=1, max=64)
    graph = capture(model, inputs, {"x": {0: batch}})
    dims = graph.dynamic_dims()
    assert list(dims) == ["x"] and list(dims["x"]) == [0] and dims["x"][0].endswith("in [1, 64]")
    torch.testing.assert_close(graph(torch.ones(9, 16))[0], model(torch.ones(9, 16)))
    with pytest.raises(InputError, match="unknown inputs"):
        capture(model, inputs, {"y": {0: batch}})
    with pytest.raises(InputError, match="1 inputs"):
        capture(model, inputs, [None, None])


def test_non_tensor_inputs_and_non_models_are_input_errors() -> None:
    model, _ = mlp.tiny()
    with pytest.raises(InputError, match="must be tensors"):
        capture(model, ([1.0, 2.0],))
    with pytest.raises(InputError, match="expected an nn.Module"):
        capture(object(), (torch.ones(1),))


def test_tree_keys_that_clash_with_module_attributes_are_rejected() -> None:
    model, inputs = mlp.tiny()
    bad = dataclasses.replace(model, params={"training": {"w": torch.ones(1)}})
    with pytest.raises(ValueError, match="clashes"):
        capture(bad, inputs)
    assert "layers.0.weight" in flatten_tree(model.params)


def test_hugging_face_model_captures_with_dynamic_shapes() -> None:
    """capture adds use_cache=False for Hugging Face models; dynamic shapes must still line up with the inputs
    (they failed with "inputs has 2 elements, but dynamic_shapes has 1")."""
    model, inputs = hf.gpt2_tiny()
    graph = capture(model, inputs, [{0: Dim.AUTO, 1: Dim.AUTO}])
    assert set(graph.dynamic_dims()["input_ids"]) == {0, 1}
    longer = torch.randint(0, 128, (3, 11))
    with torch.no_grad():
        expected = model(longer, use_cache=False).logits
    torch.testing.assert_close(graph(longer)[0], expected)

"""Models called the way their users call them: keyword inputs (None meaning "not passed"), checked on every CPU
target, exported with their input names, and every bad SPEC form refused in one line."""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from crossgraph.compiler import check
from crossgraph.compiler.cli import main
from crossgraph.graphs import InputError, capture
from fixtures import keyword_specs

KEYWORD_SPECS = Path(keyword_specs.__file__)


@pytest.mark.parametrize("factory, targets", [
    ("bert", ("eager", "onnx", "jax", "inductor")),
    ("t5", ("eager", "onnx", "jax")),
    ("t5_without_mask", ("eager", "jax")),
    ("whisper", ("eager", "onnx", "jax")),
    ("clip", ("eager", "onnx", "jax")),
])
def test_keyword_called_models_pass_every_target(factory: str, targets: tuple[str, ...]) -> None:
    model, *call = getattr(keyword_specs, factory)()
    args, kwargs = (call if len(call) == 2 else ((), call[0]))
    report = check(model, args, list(targets), kwargs=kwargs)
    for name in targets:
        assert report.targets[name].status == "pass", (name, report.targets[name].error)
    graph = capture(model, args, kwargs=kwargs)
    passed = [k for k, v in kwargs.items() if v is not None]
    assert graph.keyword_inputs == passed and graph.input_names[len(args):] == passed


def test_outputs_are_named_by_their_path_in_the_model_output() -> None:
    model, kwargs = keyword_specs.bert()
    graph = capture(model, kwargs=kwargs)
    assert graph.output_names == ["last_hidden_state", "pooler_output"]
    assert graph.input_names == ["input_ids", "attention_mask"]
    args, call = graph.split(graph.flatten((), kwargs))
    assert args == () and set(call) == {"input_ids", "attention_mask", "use_cache"}


def test_none_means_not_passed_and_a_missing_keyword_is_refused() -> None:
    model, kwargs = keyword_specs.t5_without_mask()
    graph = capture(model, kwargs=kwargs)
    assert graph.input_names == ["input_ids", "decoder_input_ids"]
    with pytest.raises(InputError, match="do not match"):
        graph.flatten((), {"input_ids": kwargs["input_ids"]})


def test_export_dynamic_keeps_keyword_names_and_reloads_outside_crossgraph(tmp_path: Path, capsys) -> None:
    out = tmp_path / "bert"
    assert main(["export", f"{KEYWORD_SPECS}:bert", "--to", "onnx", "--dynamic", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "attention_mask"]
    assert set(manifest["dynamic_dims"]) == {"input_ids", "attention_mask"}
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input_ids", "attention_mask"]
    model, kwargs = keyword_specs.bert()
    ids = torch.randint(0, 96, (3, 20))
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[1, :5] = 0
    hidden = session.run(["last_hidden_state"], {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})[0]
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
    assert np.allclose(hidden, expected, atol=1e-4)


@pytest.mark.parametrize("factory, message", [
    ("returns_list", "args is a list, not a tuple"),
    ("non_string_key", "kwargs has the key 0, not an input name"),
    ("non_tensor_leaf", "kwargs['attention_mask'] is a list"),
    ("four_items", "the factory returned a tuple"),
])
def test_bad_forms_exit_2_saying_what_to_return(capsys, factory: str, message: str) -> None:
    code = main(["check", f"{BAD_FORMS}:{factory}", "--targets", "eager"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "(model, args, kwargs)" in err
    assert len(err.strip().splitlines()) == 1, err


BAD_FORMS = Path(__file__).parent.parent / "fixtures" / "specs.py"

"""Pipelines: which passes each target runs by default, `--passes` overriding or switching them off, a failing
pass reported on the targets that ran it, and `crossgraph passes` listing them."""

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import transformers

from crossgraph.compiler import check
from crossgraph.compiler.cli import main
from crossgraph.compiler.export import export
from crossgraph.compiler.pipeline import DEFAULTS, Pipelines, passes_for
from crossgraph.graphs import Graph, InputError, capture
from crossgraph.graphs.dialect import OPS
from crossgraph.models import bert, gpt2, llama, mlp
from crossgraph.passes import CLEANUP, PIPELINES, available, registry


def test_each_lowered_target_runs_its_pipeline_and_eager_runs_none() -> None:
    for target, pipeline in DEFAULTS.items():
        assert passes_for(target, None) == PIPELINES[pipeline]
    assert passes_for("eager", None) == () and passes_for("flax", None) == ()


def test_passes_override_expand_pipelines_or_switch_off() -> None:
    assert passes_for("onnx", "none") == () and passes_for("onnx", []) == ()
    assert passes_for("eager", "cleanup,cse") == (*CLEANUP, "cse")
    with pytest.raises(InputError, match="unknown pass 'fuse_everything'.*pipelines: cleanup"):
        passes_for("onnx", "fuse_everything")


def test_pipelines_run_once_per_pass_list() -> None:
    model, inputs = mlp.tiny()
    pipelines = Pipelines(capture(model, inputs))
    first, seconds = pipelines.run(CLEANUP)
    again, same = pipelines.run(CLEANUP)
    assert again is first and same == seconds > 0
    assert pipelines.run(())[0] is pipelines.graph


def test_a_failing_pass_is_an_error_on_the_targets_that_ran_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(graph: Graph) -> Graph:
        raise RuntimeError("planted")

    monkeypatch.setitem(registry._PASSES, "explode", registry.Pass("explode", "fails on purpose", explode))
    model, inputs = mlp.tiny()
    report = check(model, inputs, ["eager", "flax"], passes="explode")
    assert report.targets["eager"].status == "error"
    assert "pass 'explode' raised RuntimeError: planted" in report.targets["eager"].error
    assert report.targets["flax"].status == "pass"  # the Flax reference reads no graph
    assert report.exit_code == 1


def test_export_records_each_artifacts_passes(tmp_path: Path) -> None:
    model, inputs = mlp.tiny()
    manifest = export(capture(model, inputs), ["onnx", "jax"], tmp_path, passes="cse")
    assert manifest["artifacts"]["onnx"]["passes"] == ["cse"]
    default = export(capture(model, inputs), ["jax"], tmp_path / "default")
    assert default["artifacts"]["jax"]["passes"] == list(PIPELINES[DEFAULTS["jax"]])
    on_disk = json.loads((tmp_path / "default" / "manifest.json").read_text())
    assert on_disk["artifacts"]["jax"]["passes"] == list(PIPELINES[DEFAULTS["jax"]])


def test_cli_lists_every_pass_one_per_line_and_pipelines_on_request(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["passes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(None, 1) for line in lines] == [[name, description] for name, description in available()]
    assert main(["passes", "--pipelines"]) == 0
    out = capsys.readouterr().out
    for name in PIPELINES:
        assert f"{name}: " in out
    assert "(default for onnx)" in out


def test_cli_check_with_passes_off_and_on(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "crossgraph.models.mlp:tiny", "--targets", "eager,jax", "--passes", "none",
                 "--strict"]) == 0
    assert main(["check", "crossgraph.models.mlp:tiny", "--targets", "eager,jax", "--passes", "cleanup",
                 "--strict"]) == 0
    assert main(["check", "crossgraph.models.mlp:tiny", "--passes", "nope"]) == 2
    assert "unknown pass 'nope'" in capsys.readouterr().err



def _hf_llama() -> tuple[torch.nn.Module, tuple[torch.Tensor]]:
    config = transformers.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval(), (torch.randint(0, 96, (2, 8)),)


@pytest.mark.parametrize("factory", [gpt2.tiny, llama.tiny, bert.tiny, _hf_llama], ids=["gpt2", "llama", "bert",
                                                                                     "hf-llama"])
def test_fused_models_keep_parity_on_every_cpu_target(factory: Callable[[], tuple[Any, Any]]) -> None:
    """Each target's default pipeline fuses the model (dialect ops in the graph it lowers) and stays in tolerance."""
    model, inputs = factory()
    graph = capture(model, inputs)
    fused, _ = Pipelines(graph).run(passes_for("onnx", None))
    assert any(n.target is OPS["attention"] for n in fused.fx.nodes)
    report = check(model, inputs, ["inductor", "onnx", "jax"], graph=graph)
    assert {t: r.status for t, r in report.targets.items()} == dict.fromkeys(["inductor", "onnx", "jax"], "pass"), \
        report.table()

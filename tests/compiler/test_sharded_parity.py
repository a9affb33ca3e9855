"""Every plan on both engines at 2, 4 and 8 devices equals the unsharded run, on GPT-2 and Llama (forward; the
training step at 4 devices); XLA's collectives for tensor parallelism are the ones propagation predicted.

One DTensor launch per device count runs every (model, plan) case of that size: starting processes costs more
than running the tiny models.
"""

import json

import numpy as np
import pytest
import torch

from crossgraph.compiler import dtensor
from crossgraph.compiler.cli import main
from crossgraph.compiler.jaxlower.sharding import ShardedJax
from crossgraph.compiler.sharded_check import check_sharded
from crossgraph.graphs import Mesh, capture
from crossgraph.models import gpt2, hf, llama
from crossgraph.passes.sharding import shard

SIZES = (2, 4, 8)
TRAIN_SIZE = 4
FACTORIES = {"gpt2": gpt2.tiny_parallel, "llama": llama.tiny_parallel}


def meshes(devices: int) -> dict[str, str]:
    return {"dp": f"data={devices}", "fsdp": f"data={devices}", "tp": f"model={devices}",
            "2d": f"data=2,model={devices // 2}"}


@pytest.fixture(scope="module")
def models() -> dict[str, tuple]:
    """Per model: its captured graph, inputs, and the unsharded run (loss and gradients included)."""
    out = {}
    for name, factory in FACTORIES.items():
        model, inputs = factory()
        graph = capture(model, inputs)
        prepared, _ = shard(graph, "dp", Mesh.parse("data=1"))
        out[name] = (graph, inputs, dtensor.run_local(prepared, inputs, train=True, loss="next_token"))
    return out


def _close(got, want, what: str) -> None:
    np.testing.assert_allclose(np.asarray(got), want.detach().numpy(), rtol=1e-4, atol=1e-5, err_msg=what)


def _grads_close(grads: dict, reference: dtensor.RunResult, what: str) -> None:
    assert set(grads) == set(reference.grads), what
    for name, want in reference.grads.items():
        _close(grads[name], want, f"{what}: gradient of {name}")


@pytest.mark.parametrize("devices", SIZES)
def test_every_plan_matches_unsharded_on_both_engines(models: dict, devices: int) -> None:
    train = devices == TRAIN_SIZE
    cases = []
    for name, (graph, inputs, reference) in models.items():
        for plan, mesh in meshes(devices).items():
            sharded, report = shard(graph, plan, Mesh.parse(mesh))
            cases.append((f"{name} {plan} on {mesh}", sharded, report, inputs, reference))
    for what, sharded, report, inputs, reference in cases:
        runner = ShardedJax(sharded)
        _close(runner.run(inputs)[0], reference.outputs[0], f"jax {what}")
        if report.mesh.names == ("model",):  # tensor parallel: XLA inserts what propagation predicted
            assert runner.collectives(inputs) == report.counts() == {"all-reduce": 5}, what
        if train:
            loss, grads = runner.grads(inputs, "next_token")
            _close(loss, reference.loss, f"jax {what}: loss")
            _grads_close(grads, reference, f"jax {what}")
    runs = dtensor.run_sharded_many([(sharded, inputs) for _, sharded, _, inputs, _ in cases], train=train,
                                    loss="next_token" if train else None)
    for (what, _, _, _, reference), run in zip(cases, runs):
        _close(run.outputs[0], reference.outputs[0], f"dtensor {what}")
        if train:
            _close(run.loss, reference.loss, f"dtensor {what}: loss")
            _grads_close(run.grads, reference, f"dtensor {what}")


def test_check_mesh_cli_reports_plans_engines_and_collectives(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    path = tmp_path / "report.json"
    code = main(["check", "crossgraph.models.llama:tiny_parallel", "--mesh", "model=2", "--json", str(path)])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads(path.read_text())
    assert {k: v["status"] for k, v in report["targets"].items()} == {
        "jax[tp]": "pass", "jax[tp] train": "pass", "dtensor[tp]": "pass", "dtensor[tp] train": "pass"}
    assert report["plans"]["tp"]["collectives"] == report["plans"]["tp"]["xla_collectives"] == {"all-reduce": 5}
    assert "tp    5 all-reduce" in out


@pytest.mark.parametrize("argv, message", [
    (("--mesh", "model=3"), "does not split evenly over mesh axis model (3)"),
    (("--mesh", "data=2", "--plan", "tp"), "mesh data=2 has no model"),
    (("--mesh", "data=2", "--targets", "onnx"), "unknown sharded engine(s) onnx"),
    (("--mesh", "data=2", "--passes", "cse"), "drop --passes"),
    (("--plan", "tp",), "--plan needs --mesh"),
])
def test_check_mesh_bad_input_exits_2(capsys: pytest.CaptureFixture[str], argv, message: str) -> None:
    code = main(["check", "crossgraph.models.gpt2:tiny_parallel", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err, err


def test_a_wrong_sharded_result_fails_the_check(monkeypatch, tmp_path) -> None:
    """The check can fail: a DTensor run whose output is off by one part in a thousand is reported and exits 1."""
    real = dtensor.run_sharded_many

    def skewed(cases, **kwargs):
        return [dtensor.RunResult([o * 1.001 for o in r.outputs], r.loss, r.grads) for r in real(cases, **kwargs)]

    monkeypatch.setattr(dtensor, "run_sharded_many", skewed)
    path = tmp_path / "report.json"
    code = main(["check", "crossgraph.models.gpt2:tiny_parallel", "--mesh", "data=2", "--plan", "dp",
                 "--targets", "dtensor", "--json", str(path)])
    targets = json.loads(path.read_text())["targets"]
    assert code == 1
    assert targets["dtensor[dp]"]["status"] == "fail" and "out of tolerance" in targets["dtensor[dp]"]["error"]
    assert targets["dtensor[dp] train"]["status"] == "pass"


def test_hugging_face_gpt2_shards_on_both_engines() -> None:
    """Hugging Face's GPT-2 (Conv1D weights, a tied head carrying autograd history, a ModelOutput each rank must
    load): tensor parallel and 2d (which holds fsdp's and dp's splits too) on data=2,model=2, forward and training
    step. (Its Llama is planned like ours: tests/passes/test_sharding.py.)"""
    torch.manual_seed(0)
    model, inputs = hf.gpt2_tiny()
    report = check_sharded(model, inputs, Mesh.parse("data=2,model=2"), plans=["tp", "2d"])
    statuses = {name: result.status for name, result in report.parity.targets.items()}
    assert set(statuses.values()) == {"pass"} and len(statuses) == 8, report.table()
    assert report.predicted["tp"].counts() == report.xla["tp"] == {"all-reduce": 5}

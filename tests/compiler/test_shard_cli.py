"""`crossgraph shard`: the plan, implied collectives and memory per device; bad meshes, plans and splits exit 2."""

import json

import pytest

from crossgraph.compiler.cli import main

GPT2 = "crossgraph.models.gpt2:tiny_parallel"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_shard_prints_plan_collectives_and_memory(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    path = tmp_path / "plan.json"
    code, out, _ = run(capsys, "shard", GPT2, "--plan", "tp", "--mesh", "model=4", "--json", str(path))
    assert code == 0
    assert "h.0.mlp.c_fc.weight" in out and "P(model, None)" in out and "P(None, model)" in out
    assert "collectives: 5 all-reduce" in out
    assert "per device: weights" in out
    data = json.loads(path.read_text())
    assert data["collectives"] == {"all-reduce": 5} and data["devices"] == 4
    assert data["weights"]["h.0.mlp.c_proj.weight"]["spec"] == "P(None, model)"
    assert data["bytes_per_device"]["weights"] < data["bytes_per_device"]["unsharded_weights"]


def test_shard_override_is_applied_and_marked_user(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    path = tmp_path / "plan.json"
    code, _, _ = run(capsys, "shard", GPT2, "--plan", "dp", "--mesh", "data=2", "--json", str(path),
                     "--override", "h.*.mlp.c_fc.weight=data,None")
    assert code == 0
    weight = json.loads(path.read_text())["weights"]["h.1.mlp.c_fc.weight"]
    assert weight == {"shape": [256, 64], "spec": "P(data, None)", "source": "user"}


@pytest.mark.parametrize("argv, message", [
    (("--plan", "tp", "--mesh", "model=3"), "dimension 0 of size 128 does not split evenly over mesh axis model (3)"),
    (("--plan", "tp", "--mesh", "data=2"), "plan tp shards over mesh axes model; mesh data=2 has no model"),
    (("--plan", "zero", "--mesh", "data=2"), "unknown sharding plan 'zero'"),
    (("--plan", "dp", "--mesh", "data:2"), "bad mesh 'data:2'"),
    (("--plan", "dp", "--mesh", "data=2", "--override", "c_fc"), "bad override 'c_fc'"),
    (("--plan", "dp", "--mesh", "data=2", "--override", "x.*=data"), "matches no parameter"),
])
def test_bad_sharding_input_exits_2(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str) -> None:
    code, out, err = run(capsys, "shard", GPT2, *argv)
    assert code == 2
    assert message in err
    assert "Traceback" not in err + out

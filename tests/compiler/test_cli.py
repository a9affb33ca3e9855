"""The CLI contract: SPEC forms, exit codes 0/1/2, one readable line for bad input, JSON and JUnit reports."""

import json
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from crossgraph.compiler.cli import main

FIXTURES = Path(__file__).parent.parent / "fixtures" / "specs.py"
REPO = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize("spec, message", [
    ("no/such/file.py:tiny", "no such file"),
    (f"{FIXTURES}:no_factory", "has no 'no_factory'"),
    (f"{FIXTURES}:raises", "the factory raised RuntimeError: weights not found"),
    (f"{FIXTURES}:not_a_tuple", "must return (model, args)"),
    ("crossgraph.models.nope:tiny", "no module named 'crossgraph.models.nope'"),
    ("just-a-name", "must be 'path/to/file.py:factory'"),
])
def test_bad_spec_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], spec: str, message: str) -> None:
    code, out, err = run(capsys, "check", spec, "--targets", "eager")
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err + out


def test_data_dependent_control_flow_exits_2_naming_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "check", f"{FIXTURES}:data_dependent", "--targets", "eager")
    assert code == 2
    assert "data-dependent control flow" in err
    assert "specs.py:14" in err and "if x.sum() > 0:" in err
    assert "torch.cond" in err
    assert "def forward" not in err  # torch.export's partial-graph dump is held back


def test_unsupported_python_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "check", f"{FIXTURES}:uses_numpy", "--targets", "eager")
    assert code == 2
    assert "cannot capture UsesNumpy" in err and "specs.py:21" in err


def test_gpt2_tiny_passes_and_writes_reports(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    js, junit = tmp_path / "r.json", tmp_path / "r.xml"
    code, out, _ = run(capsys, "check", str(REPO / "models" / "gpt2.py") + ":tiny", "--targets", "eager,flax",
                       "--json", str(js), "--junit", str(junit), "--seed", "3")
    assert code == 0, out
    report = json.loads(js.read_text())
    assert list(report)[:2] == ["spec", "targets"] and set(report["targets"]) == {"eager", "flax"}
    assert report["seed"] == 3 and report["policy"]["by_dtype"]["float32"]
    for result in report["targets"].values():  # DESIGN.md's fields first and in order, then the additions
        assert list(result)[:8] == ["status", "max_abs_err", "max_rel_err", "atol", "rtol", "seconds", "error",
                                    "first_divergent_node"]
        assert result["status"] == "pass" and result["max_abs_err"] <= result["atol"] + 1e-3
    cases = ET.parse(junit).getroot().iter("testcase")
    assert [c.get("name") for c in cases] == ["eager", "flax"]
    assert "eager" in out and "pass" in out


def test_parity_failure_exits_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    js = tmp_path / "r.json"
    code, out, _ = run(capsys, "check", f"{FIXTURES}:broken_reference", "--targets", "eager,flax",
                       "--json", str(js))
    assert code == 1
    result = json.loads(js.read_text())["targets"]
    assert result["eager"]["status"] == "pass" and result["flax"]["status"] == "fail"
    assert "out of tolerance" in result["flax"]["error"]


def test_nan_is_a_failure_never_a_pass(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "check", f"{FIXTURES}:makes_nan", "--targets", "eager")
    assert code == 1
    assert "NaN" in out


@pytest.fixture
def no_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT cannot run here, whatever the machine has: its target reports skipped."""
    from crossgraph.compiler import tensorrt
    monkeypatch.setattr(tensorrt, "unavailable", lambda: "no CUDA device")


@pytest.mark.usefixtures("no_tensorrt")
def test_package_module_spec_and_skipped_targets(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Without --strict a skipped target does not fail the check, and the verdict says it is incomplete."""
    js = tmp_path / "r.json"
    code, out, _ = run(capsys, "check", "crossgraph.models.mlp:tiny", "--targets", "eager,tensorrt",
                       "--json", str(js))
    assert code == 0
    report = json.loads(js.read_text())
    trt = report["targets"]["tensorrt"]
    assert trt["status"] == "skipped" and trt["error"] == "no CUDA device"
    assert report["targets"]["eager"]["status"] == "pass"
    assert report["verdict"] == {"status": "incomplete", "counts": {"pass": 1, "fail": 0, "error": 0, "skipped": 1},
                                 "strict": False}
    assert "verdict: incomplete (1 passed, 1 skipped); not run: tensorrt" in out


@pytest.mark.usefixtures("no_tensorrt")
def test_strict_check_fails_when_a_target_is_skipped(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    js, md, junit = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "r.xml"
    code, out, _ = run(capsys, "check", "crossgraph.models.mlp:tiny", "--targets", "eager,tensorrt", "--strict",
                       "--json", str(js), "--markdown", str(md), "--junit", str(junit))
    assert code == 1, out
    report = json.loads(js.read_text())
    assert {t: r["status"] for t, r in report["targets"].items()} == {"eager": "pass", "tensorrt": "skipped"}
    assert report["verdict"] == {"status": "incomplete", "counts": {"pass": 1, "fail": 0, "error": 0, "skipped": 1},
                                 "strict": True}
    assert "--strict: a skipped target fails the check" in out.splitlines()[-1]
    assert md.read_text().splitlines()[0].startswith("❌ **crossgraph check** `crossgraph.models.mlp:tiny`: "
                                                     "1 passed, 1 skipped — **incomplete** (strict)")
    props = {p.get("name"): p.get("value") for p in ET.parse(junit).getroot().iter("property")}
    assert json.loads(props["verdict"])["status"] == "incomplete"
    code, out, _ = run(capsys, "check", "crossgraph.models.mlp:tiny", "--targets", "eager", "--strict",
                       "--json", str(js))
    assert code == 0, out
    assert json.loads(js.read_text())["verdict"]["status"] == "pass"


def test_strict_sharded_check_fails_when_an_engine_is_skipped(capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`check --mesh` takes --strict too (the sharded run itself is stubbed: its wiring is what is tested)."""
    from crossgraph.compiler import cli
    from crossgraph.compiler.report import ParityReport, TargetResult
    from crossgraph.compiler.sharded_check import ShardedReport

    def stub(model, inputs, mesh, **kwargs):
        parity = ParityReport("s", {"jax[dp]": TargetResult("skipped", error="one device"),
                                    "dtensor[dp]": TargetResult("pass", 0.0, 0.0, 1e-5, 1e-4)})
        return ShardedReport(mesh, parity, {}, {})

    monkeypatch.setattr(cli, "check_sharded", stub)
    argv = ("check", "crossgraph.models.mlp:tiny", "--mesh", "data=2", "--plan", "dp")
    assert run(capsys, *argv)[0] == 0
    assert run(capsys, *argv, "--strict")[0] == 1


def test_nn_module_has_no_flax_reference(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    js = tmp_path / "r.json"
    code, _, _ = run(capsys, "check", f"{FIXTURES}:two_outputs", "--targets", "eager,flax", "--json", str(js))
    assert code == 0
    targets = json.loads(js.read_text())["targets"]
    assert targets["eager"]["status"] == "pass"
    assert targets["flax"]["status"] == "skipped" and "no Flax reference" in targets["flax"]["error"]


def test_missing_flax_reference_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "check", f"{FIXTURES}:missing_reference", "--targets", "flax")
    assert code == 2
    assert "no_such_module" in out


@pytest.mark.parametrize("argv, message", [
    (["check", "crossgraph.models.mlp:tiny", "--targets", "eager,tpu"], "unknown target(s) tpu"),
    (["check", "crossgraph.models.mlp:tiny", "--passes", "fuse_everything"], "unknown pass 'fuse_everything'"),
    (["check", "crossgraph.models.mlp:tiny", "--atol", "-1"], "tolerances must be >= 0"),
    (["check"], "the following arguments are required: SPEC"),
    (["frobnicate"], "invalid choice"),
])
def test_bad_options_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2
    assert message in err


def test_console_script_exit_code() -> None:
    """The installed `crossgraph` command returns main()'s exit code to the shell."""
    exe = Path(sys.executable).parent / "crossgraph"
    proc = subprocess.run([str(exe), "check", f"{FIXTURES}:raises", "--targets", "eager"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("crossgraph: error:")


def test_raw_hugging_face_model_from_a_spec(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    js = tmp_path / "r.json"
    code, out, _ = run(capsys, "check", f"{FIXTURES}:hf_gpt2", "--targets", "eager", "--json", str(js))
    assert code == 0, out
    assert json.loads(js.read_text())["targets"]["eager"]["status"] == "pass"


def test_fuzz_runs_bounded_and_writes_its_findings(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    code, text, _ = run(capsys, "fuzz", "--seconds", "60", "--max-examples", "2", "--targets", "jax",
                        "--json", str(out))
    assert code == 0 and "2 programs" in text
    report = json.loads(out.read_text())
    assert report["programs"] == 2 and report["counts"]["jax"]["pass"] == 2 and report["new_findings"] == 0


@pytest.mark.usefixtures("no_tensorrt")
def test_fuzz_on_targets_that_cannot_run_here_exits_2_naming_those_that_can(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    code, text, err = run(capsys, "fuzz", "--seconds", "600", "--targets", "tensorrt", "--json", str(out))
    assert code == 2 and text == "" and not out.exists()
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("crossgraph: error: no fuzz program ran on any target") and "tensorrt: no CUDA device" in err
    assert {"onnx", "jax"} <= set(err.rsplit("e.g. --targets ", 1)[1].strip().split(",")), err


def test_fuzz_and_reduce_reject_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(capsys, "fuzz", "--seconds", "0")[0] == 2
    assert run(capsys, "fuzz", "--seconds", "5", "--max-examples", "0")[0] == 2
    assert run(capsys, "fuzz", "--seconds", "5", "--targets", "gpu9000")[0] == 2
    code, _, err = run(capsys, "reduce", str(REPO / "models" / "mlp.py") + ":tiny", "--target", "flax",
                       "-o", str(tmp_path / "r.py"))
    assert code == 2 and "unknown target 'flax'" in err


def test_reduce_of_a_target_that_agrees_writes_nothing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = run(capsys, "reduce", str(REPO / "models" / "mlp.py") + ":tiny", "--target", "jax",
                       "-o", str(tmp_path / "r.py"))
    assert code == 0 and out.count("nothing to reduce") == 1 and not (tmp_path / "r.py").exists(), out

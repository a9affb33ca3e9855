"""Report formats CI reads: DESIGN.md's JSON (plus statistics), JUnit XML per target per example, Markdown for a
pull request, and the terminal table's notes."""

import json
from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np
import pytest

from crossgraph.compiler import ParityReport, Tolerance, TolerancePolicy, TargetResult, compare_outputs
from crossgraph.compiler.report import CaseResult

DESIGN_KEYS = ["status", "max_abs_err", "max_rel_err", "atol", "rtol", "seconds", "error", "first_divergent_node"]
NODE = {"node": "addmm_2", "op": "aten.addmm.default",  # as compiler.localize writes it
        "provenance": {"module": "layers.1", "file": "models/mlp.py", "line": 42}, "max_abs_err": 0.25,
        "max_rel_err": 0.5, "atol": 1e-5, "rtol": 1e-4, "worst_index": [0, 3], "inputs_ok": True,
        "message": "node 'addmm_2' (aten.addmm.default) at layers.1 models/mlp.py:42: 1 of 8 elements out of "
                   "tolerance; its inputs agree, so the error starts here"}
BISECT = {"target": "onnx", "passes": ["fold", "fuse_linear"], "first_bad_pass": "fuse_linear", "index": 1,
          "tried": {2: "fail", 0: "pass", 1: "pass"},
          "message": "onnx passes after 1 pass(es) and fails once 'fuse_linear' has run (pass 2 of 2)"}
WORST = {"output": "logits", "index": [0, 3], "candidate": 1.5, "reference": 1.25, "abs_err": 0.25,
         "allowed": 1.3e-4}


def case(i: int, status: str = "pass", error: str | None = None, worst: dict | None = None) -> CaseResult:
    return CaseResult(example=i, status=status, max_abs_err=1e-6 if status == "pass" else 0.25, max_rel_err=1e-6,
                      mean_abs_err=1e-7, p99_abs_err=9e-7, worst=worst, atol=1e-5, rtol=1e-4, seconds=0.5,
                      error=error)


def sample() -> ParityReport:
    """eager passes on the example inputs; onnx fails example 1 of 3 (and 2 errors); jax errors in its lowering
    with a traceback holding an ANSI escape; tensorrt is skipped; flax passes two examples."""
    fail = "output 'logits': 1 of 8 elements out of tolerance; worst at (0, 3): 1.5 vs reference 1.25\nmore"
    onnx_cases = [case(0), case(1, "fail", fail, WORST), case(2, "error", "RuntimeError: boom | bang")]
    return ParityReport(
        spec="models/mlp.py:tiny", capture_seconds=0.5, seed=7,
        policy=TolerancePolicy().with_override(1e-3, None).describe(),
        targets={
            "eager": TargetResult("pass", 0.0, 0.0, 1e-5, 1e-4, 0.1, mean_abs_err=0.0, p99_abs_err=0.0),
            "onnx": TargetResult("error", 0.25, 1e-6, 1e-5, 1e-4, 2.0, "example 2: RuntimeError: boom | bang",
                                 first_divergent_node=NODE, mean_abs_err=1e-7, p99_abs_err=9e-7, worst=WORST,
                                 cases=onnx_cases, bisect=BISECT),
            "jax": TargetResult("error", seconds=0.3, error="LoweringError: <no rule> for `aten.foo`\n"
                                "Traceback\x1b[31m line ``` 3"),
            "tensorrt": TargetResult("skipped", error="needs CUDA\nand torch_tensorrt"),
            "flax": TargetResult("pass", 1e-5, 1e-4, 1e-4, 1e-3, 1.0, cases=[case(0), case(1)]),
        })


def test_json_keeps_design_keys_in_place_and_adds_the_statistics(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    sample().write_json(path)
    report = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert list(report)[:5] == ["spec", "targets", "seed", "policy", "verdict"]
    assert report["seed"] == 7 and report["policy"]["override"] == {"atol": 1e-3, "rtol": 1e-4}
    assert list(report["targets"]) == ["eager", "onnx", "jax", "tensorrt", "flax"]
    for result in report["targets"].values():
        assert list(result)[:8] == DESIGN_KEYS
        assert {"mean_abs_err", "p99_abs_err", "worst", "examples", "bisect"} <= set(result)
    eager, onnx, flax = (report["targets"][t] for t in ("eager", "onnx", "flax"))
    assert eager["examples"] == 1 and "cases" not in eager and eager["bisect"] is None
    assert onnx["examples"] == 3 and [c["status"] for c in onnx["cases"]] == ["pass", "fail", "error"]
    assert onnx["cases"][1]["worst"] == WORST and onnx["worst"] == WORST and onnx["p99_abs_err"] == 9e-7
    assert onnx["first_divergent_node"] == NODE
    assert onnx["bisect"]["first_bad_pass"] == "fuse_linear" and onnx["bisect"]["tried"]["2"] == "fail"
    assert flax["examples"] == 2 and len(flax["cases"]) == 2


def test_json_of_a_nan_run_is_strict_and_keeps_the_nan_in_worst(tmp_path: Path) -> None:
    ref = np.ones(3, np.float32)
    v = compare_outputs(["y"], [ref], [np.array([1, np.nan, 1], np.float32)], [Tolerance(1e-5, 1e-4)])
    result = TargetResult("fail", v.max_abs_err, v.max_rel_err, v.atol, v.rtol, error=v.message,
                          mean_abs_err=v.mean_abs_err, p99_abs_err=v.p99_abs_err, worst=v.worst,
                          first_divergent_node={"node": "div", "max_abs_err": np.float32(np.inf)})
    path = tmp_path / "r.json"
    ParityReport("s", {"eager": result}).write_json(path)
    out = json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))["targets"]["eager"]
    assert out["max_abs_err"] is None and out["mean_abs_err"] is None and out["p99_abs_err"] is None
    assert out["worst"]["candidate"] == "nan" and out["worst"]["index"] == [1] and out["worst"]["reference"] == 1.0
    assert out["first_divergent_node"]["max_abs_err"] == "inf"


def test_one_example_report_keeps_the_old_json() -> None:
    """A report built the old way (no examples, no policy) serializes as before, plus the new keys."""
    old = ParityReport("s", {"eager": TargetResult("pass", 1e-6, 1e-6, 1e-5, 1e-4, 0.2)}).to_json()
    assert old["spec"] == "s" and old["seed"] is None and old["policy"] is None
    assert old["targets"]["eager"] == {"status": "pass", "max_abs_err": 1e-6, "max_rel_err": 1e-6, "atol": 1e-5,
                                       "rtol": 1e-4, "seconds": 0.2, "error": None, "first_divergent_node": None,
                                       "mean_abs_err": None, "p99_abs_err": None, "worst": None, "examples": 1,
                                       "oracle_abs_err": None, "reference_oracle_abs_err": None, "rule": None,
                                       "rules": {}, "bisect": None}


def test_junit_has_one_testcase_per_target_per_example_and_right_counts(tmp_path: Path) -> None:
    path = tmp_path / "r.xml"
    sample().write_junit(path)
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites" and len(root) == 1
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["eager", "onnx[example 0]", "onnx[example 1]", "onnx[example 2]",
                                              "jax", "tensorrt", "flax[example 0]", "flax[example 1]"]
    kinds = {c.get("name"): [child.tag for child in c] for c in cases}
    assert kinds["eager"] == [] and kinds["onnx[example 1]"] == ["failure"] and kinds["jax"] == ["error"]
    assert kinds["onnx[example 2]"] == ["error"] and kinds["tensorrt"] == ["skipped"]
    for element in (root, suite):
        assert (element.get("tests"), element.get("failures"), element.get("errors")) == ("8", "1", "2")
    assert suite.get("skipped") == "1" and float(suite.get("time")) == pytest.approx(0.5 + 0.1 + 2 + 0.3 + 1)
    props = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert props["seed"] == "7" and json.loads(props["policy"])["override"]["atol"] == 1e-3


def test_junit_failure_texts(tmp_path: Path) -> None:
    path = tmp_path / "r.xml"
    sample().write_junit(path)
    cases = {c.get("name"): c for c in ET.parse(path).getroot().iter("testcase")}
    failure = cases["onnx[example 1]"].find("failure")
    assert failure.get("message") == "output 'logits': 1 of 8 elements out of tolerance; worst at (0, 3): 1.5 vs " \
                                     "reference 1.25"
    body = failure.text
    assert body.startswith("output 'logits'") and "\nmore" in body
    assert "worst element: output 'logits' at [0, 3]: candidate 1.5, reference 1.25, abs err 2.5e-01" in body
    assert ("first divergent node: node 'addmm_2' (aten.addmm.default) at layers.1 models/mlp.py:42: 1 of 8 "
            "elements out of tolerance; its inputs agree, so the error starts here (max abs err 2.5e-01, max rel "
            "err 5.0e-01, tolerance atol 1.0e-05 rtol 1.0e-04)") in body
    assert "pass bisection: onnx passes after 1 pass(es)" in body and "0 passes: pass, 1 passes: pass" in body
    later = cases["onnx[example 2]"].find("error").text
    assert later == "RuntimeError: boom | bang"  # the diagnosis belongs to the first failing example only
    jax = cases["jax"].find("error")
    assert jax.get("message") == "LoweringError: <no rule> for `aten.foo`" and "\x1b" not in jax.text
    assert cases["tensorrt"].find("skipped").get("message") == "needs CUDA"


def test_markdown_summary(tmp_path: Path) -> None:
    report = sample()
    md = report.markdown()
    lines = md.splitlines()
    assert lines[0] == "❌ **crossgraph check** `models/mlp.py:tiny`: 2 passed, 2 errored, 1 skipped — **error**"
    assert "seed 7" in lines[2] and "override atol 1.0e-03 rtol 1.0e-04" in lines[2]
    header = lines.index("| target | status | max abs err | max rel err | tolerance | seconds | examples |")
    rows = {row.split(" | ")[0][2:]: row for row in lines[header + 2: header + 7]}
    assert list(rows) == ["eager", "onnx", "jax", "tensorrt", "flax"]
    assert rows["onnx"] == ("| onnx | ⚠️ error | 2.5e-01 | 1.0e-06 | atol 1.0e-05, rtol 1.0e-04 | 2.00 | "
                            "3 (2 not passing) |")
    assert rows["tensorrt"].endswith("| - | 0.00 | - |") and rows["flax"].endswith("| 1.00 | 2 |")
    assert md.count("<details>") == 2 and md.count("</details>") == 2  # onnx and jax, not the passes or skip
    onnx = md[md.index("<summary><b>onnx</b>"):]
    onnx = onnx[:onnx.index("</details>")]
    assert "<summary><b>onnx</b> errored: example 2: RuntimeError: boom | bang</summary>" in onnx
    assert "**worst element**: output `logits` at `[0, 3]`: candidate `1.5`, reference `1.25`" in onnx
    assert ("**first divergent node**: `aten.addmm.default` (`addmm_2`) at `models/mlp.py:42` in `layers.1`: "
            "max abs err 2.5e-01, max rel err 5.0e-01, tolerance atol 1.0e-05 rtol 1.0e-04 — "
            "node 'addmm\\_2'") in onnx
    assert "**pass bisection**: onnx passes after 1 pass(es) and fails once 'fuse\\_linear' has run" in onnx
    assert "**examples not passing**: 1, 2 (of 3)" in onnx
    jax = md[md.index("<summary><b>jax</b>"):]
    assert "<summary><b>jax</b> errored: LoweringError: &lt;no rule&gt; for `aten.foo`</summary>" in jax
    assert "````text\nLoweringError: <no rule>" in jax  # a fence longer than the ``` inside the error
    assert "Traceback line ``` 3" in jax  # control characters dropped
    path = tmp_path / "r.md"
    report.write_markdown(path)
    assert path.read_text(encoding="utf-8") == md


def test_markdown_verdict_when_all_pass_and_cells_escape_pipes() -> None:
    report = ParityReport("s", {"a|b": TargetResult("pass", 0.0, 0.0, 1e-5, 1e-4, 0.1)})
    md = report.markdown()
    assert md.startswith("✅ **crossgraph check** `s`: 1 passed — **pass**\n") and "<details>" not in md
    assert "| a\\|b | ✅ pass |" in md


def test_table_notes_name_the_divergent_node_and_the_bisection() -> None:
    table = sample().table()
    notes = table[table.index("notes:"):].splitlines()
    assert "  onnx: example 2: RuntimeError: boom | bang" in notes
    assert any(n.startswith("  onnx: first divergent node: node 'addmm_2' (aten.addmm.default) at layers.1 "
                            "models/mlp.py:42: ") for n in notes)
    assert any(n.startswith("  onnx: pass bisection: onnx passes after 1 pass(es)") for n in notes)
    assert "  tensorrt: needs CUDA" in notes and not any(n.startswith("  eager") for n in notes)


def test_node_records_without_a_message_or_with_a_failed_localization() -> None:
    """A flat record, a str provenance, and a localization that failed each read as one line."""
    flat = {"node": "mm", "op": "aten.mm.default", "file": "m.py", "line": 3, "module_path": "fc", "max_abs_err": 1}
    text = ParityReport("s", {"onnx": TargetResult("fail", first_divergent_node=flat)}).table()
    assert "onnx: first divergent node: aten.mm.default (mm) at m.py:3 in fc: max abs err 1.0e+00" in text
    as_str = {"node": "mm", "provenance": "fc m.py:3 in forward", "max_rel_err": 0.5, "extra": 1}
    text = ParityReport("s", {"onnx": TargetResult("fail", first_divergent_node=as_str)}).table()
    assert "first divergent node: (mm) at fc m.py:3 in forward: max rel err 5.0e-01, extra=1" in text
    failed = {"node": None, "message": "could not localize: KeyError: 'x'"}
    text = ParityReport("s", {"onnx": TargetResult("fail", first_divergent_node=failed)}).table()
    assert "onnx: first divergent node: could not localize: KeyError: 'x'" in text
    md = ParityReport("s", {"onnx": TargetResult("fail", error="e", first_divergent_node=failed)}).markdown()
    assert "**first divergent node**: could not localize: KeyError: 'x'" in md


def test_a_skipped_target_is_not_a_pass() -> None:
    """`passed` means every requested target ran and passed. A skip exits 0 (every target that ran is within
    tolerance), but 1 under strict (`crossgraph check --strict`); the verdict says incomplete either way."""
    ok = TargetResult("pass", 0.0, 0.0, 1e-5, 1e-4, 0.1)
    report = ParityReport("s", {"eager": ok, "tensorrt": TargetResult("skipped", error="no CUDA device")})
    assert not report.passed and report.exit_code == 0
    assert report.verdict() == {"status": "incomplete", "counts": {"pass": 1, "fail": 0, "error": 0, "skipped": 1},
                                "strict": False}
    assert report.to_json()["verdict"] == report.verdict()
    report.strict = True
    assert report.exit_code == 1 and report.to_json()["verdict"]["strict"] is True
    nothing_ran = ParityReport("s", {"tensorrt": TargetResult("skipped", error="no CUDA device")})
    assert not nothing_ran.passed and nothing_ran.exit_code == 0 and nothing_ran.verdict_status == "incomplete"
    assert not ParityReport("s", {}).passed
    all_pass = ParityReport("s", {"eager": ok}, strict=True)
    assert all_pass.passed and all_pass.exit_code == 0 and all_pass.verdict_status == "pass"


def test_verdict_in_the_table_junit_and_markdown(tmp_path: Path) -> None:
    report = sample()  # 2 pass, 2 error, 1 skipped
    assert report.verdict() == {"status": "error", "counts": {"pass": 2, "fail": 0, "error": 2, "skipped": 1},
                                "strict": False}
    assert report.table().splitlines()[-1] == ("verdict: error (2 passed, 2 errored, 1 skipped); not run: tensorrt "
                                               "(--strict would fail on this)")
    path = tmp_path / "r.xml"
    report.write_junit(path)
    props = {p.get("name"): p.get("value") for p in ET.parse(path).getroot().iter("property")}
    assert json.loads(props["verdict"]) == report.verdict()
    worse = ParityReport("s", {"a": TargetResult("fail", error="off"), "b": TargetResult("error", error="boom")})
    assert worse.verdict_status == "fail" and worse.exit_code == 1
    incomplete = ParityReport("s", {"eager": TargetResult("pass", 0.0, 0.0, 1e-5, 1e-4, 0.1),
                                    "tensorrt": TargetResult("skipped", error="no CUDA device")})
    assert incomplete.markdown().startswith("⏭️ **crossgraph check** `s`: 1 passed, 1 skipped — **incomplete**\n")
    incomplete.strict = True
    assert incomplete.markdown().startswith("❌ **crossgraph check** `s`: 1 passed, 1 skipped — **incomplete** "
                                            "(strict)\n")
    assert incomplete.table().splitlines()[-1].endswith("not run: tensorrt (--strict: a skipped target fails the "
                                                        "check)")

"""bench/hf_sweep.py's breadth sweep, a representative subset: one architecture per family (a Llama-style
decoder, a BERT encoder, a ViT, T5 seq2seq, CLIP multimodal, Mixtral MoE), built from tiny configs with random weights and
called with keyword inputs (left-padded attention masks), passes onnx and jax; the BERT encoder passes inductor
too (one AOTI compile: each costs 10-30 s here). The sweep's own bookkeeping (cells, summary, atomic files, a
dead subprocess) is tested without running a model."""

import json
from pathlib import Path

import pytest

from helpers import bench_module

hf_sweep = bench_module("hf_sweep")

SUBSET = {"llama": ["onnx", "jax"], "bert": ["onnx", "jax", "inductor"], "vit": ["onnx", "jax"],
          "t5": ["onnx", "jax"], "clip": ["onnx", "jax"], "mixtral": ["onnx", "jax"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SUBSET))
def test_family_representative_passes(name: str) -> None:
    result = hf_sweep.run_one(name, SUBSET[name])
    cells = result["targets"]
    assert {t: c["status"] for t, c in cells.items()} == {t: "pass" for t in SUBSET[name]}, cells


def test_every_family_and_at_least_forty_architectures() -> None:
    families = {a.family for a in hf_sweep.ARCHS.values()}
    assert len(hf_sweep.ARCHS) >= 40
    assert {"decoder", "encoder", "vision", "seq2seq", "audio", "multimodal"} <= families
    for name in SUBSET:
        assert name in hf_sweep.ARCHS


def test_decoder_inputs_are_keywords_with_left_padding() -> None:
    kwargs = hf_sweep.ARCHS["llama"].inputs()
    assert set(kwargs) == {"input_ids", "attention_mask"}
    mask = kwargs["attention_mask"]
    assert mask[0, :3].tolist() == [0, 0, 0] and bool(mask[0, 3:].all()) and bool(mask[1].all())


def test_summary_counts_cells_and_pass_rate() -> None:
    results = {"a": {"family": "decoder", "auto": "X", "targets": {"onnx": {"status": "pass"},
                                                                   "jax": {"status": "pass"}}},
               "b": {"family": "encoder", "auto": "X",
                     "targets": {"onnx": {"status": "crash", "error": "E", "pass_crash": True},
                                 "jax": {"status": "unsupported", "error": "no translation for aten.x"}}}}
    s = hf_sweep.summary(results, ["onnx", "jax"])
    assert s["pass_every_target"] == 1 and s["pass_rate"] == 0.5
    assert s["internal_errors"] == 1 and s["pass_crashes"] == 1 and s["cells"]["unsupported"] == 1
    text = hf_sweep.markdown({"date": "d", "machine": "m", "versions": {}, "command": "c",
                              "targets": ["onnx", "jax"], "results": results, "summary": s})
    assert "| b | encoder | X | **crash** | **unsupported** |" in text
    assert "- **b** / jax: unsupported — no translation for aten.x" in text


def test_dead_subprocess_is_a_crash_and_results_are_written(tmp_path: Path, monkeypatch) -> None:
    """A worker that dies before writing its result is recorded as crash, a hung one as timeout, and the
    results files exist after each architecture."""
    die = tmp_path / "die.py"
    die.write_text("import os\nos._exit(3)\n")
    monkeypatch.setattr(hf_sweep, "WORKER", die)
    doc = hf_sweep.sweep(["bert"], ["onnx"], tmp_path / "out", timeout=60, merge=False)
    cell = doc["results"]["bert"]["targets"]["onnx"]
    assert cell["status"] == "crash" and "exit 3" in cell["error"]
    saved = json.loads((tmp_path / "out.json").read_text())
    assert saved["summary"]["internal_errors"] == 1
    assert "**crash**" in (tmp_path / "out.md").read_text()
    hang = tmp_path / "hang.py"
    hang.write_text("import time\ntime.sleep(60)\n")
    monkeypatch.setattr(hf_sweep, "WORKER", hang)
    doc = hf_sweep.sweep(["vit"], ["jax"], tmp_path / "out", timeout=1, merge=True)
    assert doc["results"]["vit"]["targets"]["jax"]["status"] == "timeout"
    assert doc["results"]["bert"]["targets"]["onnx"]["status"] == "crash"  # merged, not lost


def test_combine_merges_cells_of_several_runs(tmp_path: Path) -> None:
    base = {"date": "d", "machine": "m", "versions": {}, "timeout": 1}
    fast = {**base, "command": "fast", "sweep_seconds": 10, "results": {
        "bert": {"family": "encoder", "auto": "AutoModel", "targets": {"onnx": {"status": "pass"}}}}}
    slow = {**base, "command": "inductor", "sweep_seconds": 5, "results": {
        "bert": {"family": "encoder", "auto": "AutoModel", "targets": {"inductor": {"status": "fail", "error": "e"}}}}}
    (tmp_path / "a.json").write_text(json.dumps(fast))
    (tmp_path / "b.json").write_text(json.dumps(slow))
    doc = hf_sweep.combine([tmp_path / "a.json", tmp_path / "b.json"], tmp_path / "out")
    assert doc["targets"] == ["onnx", "inductor"] and doc["sweep_seconds"] == 15
    assert doc["results"]["bert"]["targets"] == {"onnx": {"status": "pass"},
                                                  "inductor": {"status": "fail", "error": "e"}}
    assert doc["summary"]["pass_every_target"] == 0
    assert json.loads((tmp_path / "out.json").read_text())["summary"] == doc["summary"]


def test_cells_classify_target_results() -> None:
    from crossgraph.compiler.report import TargetResult
    unsupported = TargetResult(status="error", bad_input=True,
                               error="UnsupportedOpError: target 'jax' has no translation for aten.foo")
    crash = TargetResult(status="error", error="PassError: pass 'cse' raised KeyError\nTraceback ...")
    fail = TargetResult(status="fail", max_abs_err=0.5, atol=1e-5, rtol=1e-4,
                        error="output 'logits': 3 of 8 elements out of tolerance",
                        first_divergent_node={"node": "add_3"})
    assert hf_sweep._cell(unsupported)["status"] == "unsupported"
    assert hf_sweep._cell(unsupported)["error"].endswith("no translation for aten.foo")
    cell = hf_sweep._cell(crash)
    assert cell["status"] == "crash" and cell["pass_crash"] and cell["error"] == "PassError: pass 'cse' raised KeyError"
    cell = hf_sweep._cell(fail)
    assert cell["status"] == "fail" and cell["error"].startswith("output 'logits': 3 of 8") and "add_3" in cell["error"]

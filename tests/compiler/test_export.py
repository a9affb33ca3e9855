"""`crossgraph export`: one file per target plus manifest.json, loadable without crossgraph, written atomically."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from crossgraph.compiler.cli import main
from crossgraph.compiler.export import export
from crossgraph.graphs import InputError, capture, flatten_tree
from crossgraph.models import gpt2

FIXTURES = Path(__file__).parent.parent / "fixtures"
TARGETS = "onnx,inductor,jax"
FILES = {"onnx": "model.onnx", "inductor": "model.pt2", "jax": "model.jax.bin"}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export")
    assert main(["export", "crossgraph.models.gpt2:tiny", "--to", TARGETS, "--out", str(out), "--dynamic"]) == 0
    return out


def test_writes_every_file_and_a_manifest(exported: Path) -> None:
    manifest = json.loads((exported / "manifest.json").read_text())
    assert set(manifest["artifacts"]) == set(FILES)
    for target, entry in manifest["artifacts"].items():
        path = exported / entry["file"]
        assert entry["file"] == FILES[target] and entry["target"] == target
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert entry["bytes"] == path.stat().st_size
    assert manifest["artifacts"]["onnx"]["opset"] >= 18
    assert manifest["inputs"][0]["name"] == "input_ids" and manifest["outputs"][0]["name"] == "output"
    assert [isinstance(d, str) for d in manifest["inputs"][0]["shape"]] == [True, True]  # batch, seq symbolic
    params = flatten_tree(gpt2.init(gpt2.GPT2Config.tiny()))
    assert manifest["parameters"] == sum(t.numel() for t in params.values())
    assert all(manifest["versions"][k] for k in ("torch", "jax", "onnx", "onnxruntime"))
    assert not list(exported.glob("*.partial"))
    assert main(["verify", str(exported)]) == 0  # hashes, loads, and the reference sample on every file


def test_files_load_with_their_own_runtimes_in_a_process_without_crossgraph(exported: Path, tmp_path: Path) -> None:
    """Two shapes the export never saw, each runtime's own loader, no crossgraph on the path."""
    model, _ = gpt2.tiny()
    for batch, seq in [(2, 5), (3, 17)]:  # --dynamic ranges start at 2 (torch.export specializes 0 and 1)
        (ids,) = gpt2.example_inputs(model.config, batch, seq, seed=seq)
        cases = tmp_path / f"cases_{batch}_{seq}.npz"
        np.savez(cases, in_0=ids.numpy(), out_0=model(ids).numpy())
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        proc = subprocess.run([sys.executable, "-I", str(FIXTURES / "load_artifacts.py"), str(exported), str(cases)],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.count("max_abs_err=") == 3


def test_failed_target_leaves_nothing_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """All or nothing: the onnx file written before tensorrt failed goes with the temporary directory."""
    out = tmp_path / "out"
    code = main(["export", "crossgraph.models.mlp:tiny", "--to", "onnx,tensorrt", "--out", str(out)])
    assert code == 2
    assert "tensorrt" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_unknown_target_writes_nothing(tmp_path: Path) -> None:
    graph = capture(*gpt2.tiny())
    with pytest.raises(InputError, match="cannot export to"):
        export(graph, ["onnx", "coreml"], tmp_path / "out")
    assert not (tmp_path / "out").exists()

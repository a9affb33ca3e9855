"""Files and faults: exports are whole or absent (kill -9, a full disk, SIGINT, SIGTERM, a failing target), a
changed file is named by `crossgraph verify` and refused by crossgraph's loaders, and unusable output paths or
options exit 2 in one line before any model is built."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from crossgraph.compiler import cli
from crossgraph.compiler.cli import main
from crossgraph.graphs import InputError

SPEC = "crossgraph.models.mlp:tiny"
FILES = {"onnx": "model.onnx", "jax": "model.jax.bin", "inductor": "model.pt2"}
CLI = [sys.executable, "-m", "crossgraph.compiler.cli"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def partials(parent: Path) -> list[Path]:
    return sorted(parent.glob(".*.partial"))


# ---- an export of every CPU target, its verification, and changed files --------------------------------------

@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("faults") / "export"
    assert main(["export", SPEC, "--to", ",".join(FILES), "--out", str(out)]) == 0
    return out


def test_untouched_export_of_every_cpu_target_passes_verify(exported: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "verify", str(exported))
    assert code == 0, out + err
    lines = {line.split()[0]: line for line in out.splitlines() if line.split()}
    for name in (*FILES.values(), "reference.npz", "manifest.json"):
        assert " ok " in lines[name], out
    for name in FILES.values():
        assert "reference sample within tolerance" in lines[name]
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["reference_sample"]["file"] == "reference.npz"
    with np.load(exported / "reference.npz", allow_pickle=False) as sample:
        assert {"in_0", "out_0", "oracle_0"} <= set(sample.files)
    assert sorted(p.name for p in exported.iterdir()) == sorted(
        [*FILES.values(), "manifest.json", "reference.npz"])
    assert not partials(exported.parent)


def _load(target: str, path: Path) -> Any:
    if target == "onnx":
        from crossgraph.compiler.onnx_rt import load
    elif target == "jax":
        from crossgraph.compiler.jaxlower.artifact import load
    else:
        from crossgraph.compiler.inductor import load
    return load(path)


@pytest.mark.parametrize("target", list(FILES))
def test_bit_flip_is_named_by_verify_and_refused_by_the_loader(exported: Path, tmp_path: Path, target: str,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "export"
    shutil.copytree(exported, copy)
    path = copy / FILES[target]
    _load(target, path)  # the untouched copy loads
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    code, out, err = run(capsys, "verify", str(copy))
    assert code == 1, out + err
    assert f"{FILES[target]}: sha256 failed" in err and "Traceback" not in out + err
    others = [name for t, name in FILES.items() if t != target]
    assert all(f"{name}: " not in err for name in others), err  # the others still pass
    with pytest.raises(InputError, match="sha256.*changed since it was exported"):
        _load(target, path)


def test_a_changed_reference_sample_is_named_and_wrong_outputs_fail_the_sample_check(
        exported: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copy = tmp_path / "export"
    shutil.copytree(exported, copy)
    sample = copy / "reference.npz"
    with np.load(sample, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["out_0"], arrays["oracle_0"] = arrays["out_0"] + 0.5, arrays["oracle_0"] + 0.5  # same size, new hash
    with open(sample, "wb") as f:
        np.savez(f, **arrays)
    code, _, err = run(capsys, "verify", str(copy))
    assert code == 1 and "reference.npz: sha256 failed" in err
    # the same wrong outputs with a manifest that vouches for them: every model file fails its sample run
    manifest = json.loads((copy / "manifest.json").read_text())
    from crossgraph.compiler.artifact import sha256
    manifest["reference_sample"] |= {"bytes": sample.stat().st_size, "sha256": sha256(sample)}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run(capsys, "verify", str(copy))
    assert code == 1
    for name in FILES.values():
        assert f"{name}: reference sample failed" in err and "out of tolerance" in err


def test_verify_refuses_what_is_not_an_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for directory in (tmp_path / "missing", tmp_path):
        code, _, err = run(capsys, "verify", str(directory))
        assert code == 2 and len(err.strip().splitlines()) == 1, err
    (tmp_path / "manifest.json").write_text('{"format": "something else"}')
    code, _, err = run(capsys, "verify", str(tmp_path))
    assert code == 2 and "not a crossgraph export" in err
    (tmp_path / "manifest.json").write_text('{"format": "crossgraph.export/1", "artifacts": {"onnx": '
                                            '{"file": "../../etc/passwd", "bytes": 1, "sha256": "00"}}}')
    code, _, err = run(capsys, "verify", str(tmp_path))
    assert code == 1 and "manifest.json: entry 'onnx' failed" in err


# ---- kill -9, a file-size limit, SIGINT and SIGTERM, each in a real `crossgraph export` process ----------------

# writes past the limit fail with EFBIG (SIGXFSZ ignored, not fatal); model.onnx alone is ~13 KB. Set in a small
# Python that then execs the CLI: a preexec_fn would fork this (multithreaded: JAX) process.
LIMITED_CLI = [sys.executable, "-c", "import os, resource, signal, sys; "
               "signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192)); "
               "os.execv(sys.executable, [sys.executable, '-m', 'crossgraph.compiler.cli', *sys.argv[1:]])"]


@pytest.fixture(scope="module")
def faults(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, str, Path]]:
    """Four exports started at once (they spend most of their time importing): three signalled as soon as
    their temporary directory appears, one under a file-size limit. name -> (exit code, stdout, stderr, the
    parent directory of --out)."""
    root = tmp_path_factory.mktemp("signals")
    signals = {"kill": signal.SIGKILL, "sigint": signal.SIGINT, "sigterm": signal.SIGTERM}
    procs = {}
    for name in (*signals, "fsize"):
        (root / name).mkdir()
        argv = [*(LIMITED_CLI if name == "fsize" else CLI), "export", SPEC, "--to", "onnx,jax", "--out",
                str(root / name / "out")]
        procs[name] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    waiting, deadline = dict(signals), time.monotonic() + 300
    while waiting and time.monotonic() < deadline:
        for name, signum in list(waiting.items()):
            if partials(root / name) or procs[name].poll() is not None:
                procs[name].send_signal(signum)
                del waiting[name]
        time.sleep(0.02)
    results = {}
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        results[name] = (proc.returncode, out, err, root / name)
    return results


def test_kill_9_during_export_leaves_no_out_and_the_rerun_succeeds_without_stale_files(
        faults: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _, parent = faults["kill"]
    assert code == -signal.SIGKILL
    assert partials(parent) and not (parent / "out").exists()  # a dead temporary sibling, never a partial out
    code, out, err = run(capsys, "export", SPEC, "--to", "onnx", "--out", str(parent / "out"))
    assert code == 0, out + err
    assert [p.name for p in parent.iterdir()] == ["out"]  # the dead run's temporary directory is gone
    assert run(capsys, "verify", str(parent / "out"))[0] == 0


@pytest.mark.parametrize("name, code, signame", [("sigint", 130, "SIGINT"), ("sigterm", 143, "SIGTERM")])
def test_sigint_and_sigterm_during_export_exit_in_one_line_and_leave_nothing(
        faults: dict[str, Any], name: str, code: int, signame: str) -> None:
    returncode, out, err, parent = faults[name]
    assert returncode == code, out + err
    assert err.strip().splitlines() == [f"crossgraph: interrupted by {signame}; no partial output was left behind"]
    assert "Traceback" not in out + err
    assert list(parent.iterdir()) == []


def test_file_size_limit_during_export_exits_2_in_one_line_and_leaves_nothing(faults: dict[str, Any]) -> None:
    returncode, out, err, parent = faults["fsize"]
    assert returncode == 2, out + err
    assert len(err.strip().splitlines()) == 1 and "File too large" in err and "nothing was written" in err
    assert list(parent.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_between_two_targets_leaves_no_partial_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], signum: int) -> None:
    """Deterministic, in this process: the signal arrives once the first model file is written."""
    from crossgraph.compiler import export as exporter

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("Python handles signals only in the main thread")
    lower, calls = exporter.lower, []

    def signalling_lower(graph: Any, target: str) -> Any:
        calls.append(target)
        if len(calls) == 2:
            os.kill(os.getpid(), signum)
        return lower(graph, target)

    monkeypatch.setattr(exporter, "lower", signalling_lower)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    code, out, err = run(capsys, "export", SPEC, "--to", "onnx,jax", "--out", str(tmp_path / "out"))
    assert code == 128 + signum and calls == ["onnx", "jax"]
    assert len(err.strip().splitlines()) == 1 and "interrupted" in err and "Traceback" not in out + err
    assert list(tmp_path.iterdir()) == []
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # restored


# ---- --out, --force, and output paths checked before the model is built ----------------------------------------

@pytest.fixture
def no_capture(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if a command gets as far as building the model."""
    def reached(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the model was built before the bad option was refused")
    monkeypatch.setattr(cli.spec_loader, "load", reached)
    monkeypatch.setattr(cli, "capture", reached)


def test_non_empty_out_exits_2_without_force_and_force_replaces_it_whole(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with monkeypatch.context() as m:
        m.setattr(cli.spec_loader, "load", lambda spec: (_ for _ in ()).throw(AssertionError("built")))
        code, _, err = run(capsys, "export", SPEC, "--to", "onnx", "--out", str(out))
    assert code == 2 and "not empty" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    code, _, err = run(capsys, "export", SPEC, "--to", "onnx", "--out", str(out), "--force")
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx", "reference.npz"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def _unwritable(tmp_path: Path) -> Path:
    """A directory this process cannot create files in (root ignores permission bits: /proc then)."""
    if os.geteuid() == 0:
        return Path("/proc")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    return locked


def _bad_invocations(tmp_path: Path) -> list[list[str]]:
    (tmp_path / "a-file").write_text("")
    unwritable = _unwritable(tmp_path)
    return [
        ["check", SPEC, "--json", str(tmp_path / "missing" / "r.json")],
        ["check", SPEC, "--junit", str(tmp_path)],
        ["check", SPEC, "--markdown", str(tmp_path / "a-file" / "r.md")],
        ["check", SPEC, "--atol", "inf"],
        ["check", SPEC, "--rtol", "nan"],
        ["export", SPEC, "--to", "onnx", "--out", str(unwritable / "out")],
        ["export", SPEC, "--to", "onnx", "--out", str(tmp_path / "a-file")],
        ["export", SPEC, "--to", "coreml", "--out", str(tmp_path / "out")],
        ["reduce", SPEC, "--target", "onnx", "-o", str(tmp_path / "missing" / "repro.py")],
        ["bench", SPEC, "--out", str(tmp_path / "a-file")],
        ["quantize", SPEC, "--scheme", "int8", "--json", str(unwritable / "q.json")],
    ]


def test_bad_output_paths_and_options_exit_2_in_one_line_before_capture(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], no_capture: None) -> None:
    for argv in _bad_invocations(tmp_path):
        start = time.monotonic()
        code, out, err = run(capsys, *argv)
        assert code == 2, (argv, out, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in out + err, (argv, err)
        assert time.monotonic() - start < 5, argv
    assert sorted(p.name for p in tmp_path.iterdir()) in (["a-file"], ["a-file", "locked"])


def test_reports_are_serialized_whole_before_anything_is_written(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A report that cannot be serialized (a NaN, with strict JSON) writes nothing and keeps the older file."""
    from crossgraph.compiler.report import ParityReport

    path = tmp_path / "r.json"
    path.write_text('{"old": true}\n')
    monkeypatch.setattr(ParityReport, "to_json", lambda self: {"spec": "x", "targets": {"a": float("inf")}})
    with pytest.raises(ValueError):
        ParityReport.write_json(object.__new__(ParityReport), path)
    assert path.read_text() == '{"old": true}\n' and not partials(tmp_path)

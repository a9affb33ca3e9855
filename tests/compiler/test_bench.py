"""The benchmark harness: timing statistics, memory, batch resizing, bad settings, and a --quick run of every CPU
runtime through the CLI that writes the JSON, Markdown and chart."""

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest
import torch

from crossgraph.compiler import benchmark
from crossgraph.compiler.benchmark import harness, machine, runtimes
from crossgraph.compiler.benchmark.timing import Latency, PeakMemory, Runs, measure, percentile
from crossgraph.compiler.cli import main
from crossgraph.graphs import InputError
from helpers import bench_module

REPO = Path(__file__).resolve().parents[2]
SPEC = "crossgraph.models.mlp:tiny"


@pytest.fixture(autouse=True)
def restore_threads() -> Iterator[None]:
    """The CLI pins the process's CPUs and torch's threads; later tests in this worker get them back."""
    cpus, threads = machine.schedulable_cpus(), torch.get_num_threads()
    yield
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, cpus)
    torch.set_num_threads(threads)


def test_percentile_matches_numpy() -> None:
    values = [0.3, 0.1, 0.7, 0.2, 0.9, 0.4, 0.5]
    for q in (0, 50, 90, 100):
        assert percentile(values, q) == pytest.approx(np.percentile(values, q))
    latency = Latency(tuple(values))
    assert latency.median == 0.4 and latency.p90 == pytest.approx(np.percentile(values, 90))
    assert latency.to_json()["runs"] == 7


def test_measure_warms_up_then_times_in_rounds() -> None:
    order = []
    latencies = measure({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                        Runs(warmup=2, runs=3, min_seconds=0.0, max_runs=50))
    assert order == ["a", "a", "b", "b"] + ["a", "b"] * 3  # warm-ups first, then one call of each per round
    assert [len(lat.samples) for lat in latencies.values()] == [3, 3]


def test_measure_leads_each_timed_call_in_with_untimed_calls_of_the_same_runtime() -> None:
    order = []
    latencies = measure({"a": lambda: order.append("a"), "b": lambda: order.append("b")},
                        Runs(warmup=1, runs=2, min_seconds=0.0, max_runs=2, settle=0.0, lead_in=2))
    assert order == ["a", "b"] + ["a", "a", "a", "b", "b", "b"] * 2  # each timed call after two of its own
    assert [len(lat.samples) for lat in latencies.values()] == [2, 2]


def test_measure_runs_at_least_min_seconds_per_call_up_to_max_runs() -> None:
    latency = measure({"sleep": lambda: time.sleep(0.01)}, Runs(warmup=0, runs=2, min_seconds=0.1, settle=0.0,
                                                                  max_runs=100))["sleep"]
    assert 8 <= len(latency.samples) <= 12  # about 0.1 s of 10 ms calls
    assert all(s >= 0.01 for s in latency.samples)
    capped = measure({"x": lambda: None}, Runs(warmup=0, runs=2, min_seconds=10.0, max_runs=5))["x"]
    assert len(capped.samples) == 5


@pytest.mark.parametrize("bad", [dict(runs=0), dict(warmup=-1), dict(runs=5, max_runs=4), dict(min_seconds=-1),
                                 dict(settle=-0.1), dict(lead_in=-1)])
def test_bad_run_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Runs(**bad)


def test_peak_memory_sees_an_allocation_inside_the_block() -> None:
    with PeakMemory() as memory:
        block = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
        del block
    if not memory.exact:
        pytest.skip("no per-block high-water mark on this OS")
    assert memory.growth_bytes >= 190 * 2**20
    with PeakMemory() as quiet:
        pass
    assert quiet.growth_bytes < 50 * 2**20  # the earlier peak does not leak into a later block


def test_resize_batch_repeats_rows_on_dim_0() -> None:
    ids = torch.tensor([[1, 2], [3, 4]])
    mask = torch.tensor([[1, 1], [1, 0]])
    big_ids, big_mask = harness.resize_batch((ids, mask), 5)
    assert big_ids.tolist() == [[1, 2], [3, 4], [1, 2], [3, 4], [1, 2]]
    assert big_mask.shape == (5, 2)
    assert harness.resize_batch((ids,), 1)[0].tolist() == [[1, 2]]
    with pytest.raises(InputError, match="do not share one dim 0"):
        harness.resize_batch((ids, torch.zeros(3, 2)), 4)
    with pytest.raises(InputError, match="do not share one dim 0"):
        harness.resize_batch((torch.tensor(1.0),), 4)


def test_speedups_are_peer_median_over_target_median() -> None:
    def entry(kind: str, median: float, status: str = "ok") -> dict[str, Any]:
        return {"kind": kind, "status": status, "latency": {"median": median}}

    got = harness.speedups({"onnx": entry("target", 2.0), "jax": entry("target", 1.0, "error"),
                            "ort-dynamo": entry("peer", 3.0), "torch-eager": entry("peer", 1.0),
                            "flax-jit": entry("peer", 1.0, "skipped")})
    assert got == {"onnx": {"ort-dynamo": 1.5, "torch-eager": 0.5}}


@pytest.mark.parametrize("settings, message", [
    (harness.Settings(targets=("flax",)), "timed as the peer flax-jit"),
    (harness.Settings(targets=("tpu",)), "unknown bench target(s) tpu"),
    (harness.Settings(peers=("tvm",)), "unknown peer(s) tvm"),
    (harness.Settings(targets=(), peers=()), "nothing to time"),
    (harness.Settings(batch_sizes=(0,)), "batch sizes must be positive"),
])
def test_bad_settings_are_input_errors(settings: harness.Settings, message: str) -> None:
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings.runtimes()


@pytest.mark.parametrize("argv, message", [
    (["--targets", "flax"], "flax-jit"),
    (["--batch-sizes", "1,x"], "bad bench settings"),
    (["--batch-sizes", "0"], "batch sizes must be positive"),
    (["--runs", "0"], "bad bench settings"),
    (["--threads", "999"], "--threads 999"),
])
def test_cli_bad_bench_input_exits_2(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code = main(["bench", SPEC, *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_machine_description_and_peak() -> None:
    described = machine.describe(1)
    assert described["threads"] == 1 and described["cpu"] and "torch" in described["libraries"]
    name = machine.slug(described)
    assert name.endswith("-1t") and name == name.lower() and " " not in name
    assert machine.slug({"cpu": "Intel(R) Xeon(R) Platinum 8480C @ 2.0GHz", "threads": 2}) == \
        "intel-xeon-platinum-8480c-2t"
    assert machine.matmul_peak(size=256, runs=3) > 1e8  # any machine does 0.1 GFLOP/s


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path, str]:
    """`crossgraph bench --quick` on the tiny MLP with every CPU target and peer, at batch 1 and 4."""
    cpus, threads = machine.schedulable_cpus(), torch.get_num_threads()
    path = tmp_path_factory.mktemp("bench") / "results.json"
    try:
        code = main(["bench", SPEC, "--quick", "--targets", "eager,inductor,onnx,jax,tensorrt",
                     "--batch-sizes", "1,4", "--json", str(path)])
    finally:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cpus)
        torch.set_num_threads(threads)
    return code, path, path.read_text() if path.exists() else ""


def test_quick_run_times_every_runtime_and_checks_it(quick_run: tuple[int, Path, str]) -> None:
    code, path, _ = quick_run
    assert code == 0
    results = benchmark.load(path)
    assert results["format"] == "crossgraph.bench/1" and results["spec"] == SPEC
    assert results["machine"]["threads"] == len(machine.schedulable_cpus())
    assert results["matmul_peak_flops"] > 0 and results["model"]["parameters"] > 0
    assert list(results["batches"]) == ["1", "4"]
    for batch, data in results["batches"].items():
        assert data["inputs"] == [f"float32[{batch}, 16]"] and data["flops"] > 0
        entries = data["runtimes"]
        assert list(entries) == ["eager", "inductor", "onnx", "jax", "tensorrt", *benchmark.PEERS]
        for name in ("tensorrt", "torch-tensorrt"):
            assert entries[name]["status"] == "skipped" and entries[name]["error"]
        timed = {n: e for n, e in entries.items() if e["status"] != "skipped"}
        for name, e in timed.items():
            assert e["status"] == "ok", (name, e)
            assert e["parity"]["status"] == "pass", (name, e["parity"])
            assert e["latency"]["runs"] == 3 and 0 < e["latency"]["median"] <= e["latency"]["p90"] * (1 + 1e-9)
            assert e["throughput"] == pytest.approx(int(batch) / e["latency"]["median"])
            assert e["achieved_flops"] == pytest.approx(data["flops"] / e["latency"]["median"])
            assert e["first_call"]["seconds"] == pytest.approx(sum(e["first_call"]["phases"].values()))
            assert e["peak_rss_bytes"] > 0
        for name in ("eager", "inductor", "onnx", "jax"):
            assert list(timed[name]["first_call"]["phases"])[0] == "capture"
        assert list(timed["onnx"]["first_call"]["phases"]) == ["capture", "passes", "lower", "compile", "first_run"]
        for name in ("inductor", "onnx", "jax", "ort-dynamo"):
            assert timed[name]["file_bytes"] > 0
        assert set(data["speedups"]) == {"eager", "inductor", "onnx", "jax"}
        for per_peer in data["speedups"].values():
            assert set(per_peer) == {"torch-eager", "torch.compile", "ort-dynamo", "flax-jit"}


def test_quick_run_writes_markdown_and_chart(quick_run: tuple[int, Path, str]) -> None:
    _, path, _ = quick_run
    text = path.with_suffix(".md").read_text()
    assert f"crossgraph bench {SPEC}" in text and "**Batch 4**" in text
    assert "| torch.compile | peer |" in text and "| tensorrt | target | skipped:" in text
    assert "| inductor | 4 |" in text and "![median latency per runtime](results.png)" in text
    png = path.with_suffix(".png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_a_failing_runtime_is_reported_and_the_rest_still_run(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str],
                                                              tmp_path: Path) -> None:
    def broken(case: runtimes.Case) -> runtimes.Built:
        raise RuntimeError("planted failure\nsecond line")

    monkeypatch.setitem(runtimes.PEERS, "torch-eager",
                        runtimes.Runtime("torch-eager", "peer", "planted", "eager", broken))
    code = main(["bench", SPEC, "--quick", "--targets", "eager", "--peers", "torch-eager",
                 "--batch-sizes", "2", "--json", str(tmp_path / "r.json")])
    captured = capsys.readouterr()
    assert code == 1 and "torch-eager at batch 2" in captured.err
    entries = json.loads((tmp_path / "r.json").read_text())["batches"]["2"]["runtimes"]
    assert entries["torch-eager"] == {"kind": "peer", "description": "planted", "status": "error",
                                      "error": "RuntimeError: planted failure"}
    assert entries["eager"]["status"] == "ok"


def test_load_refuses_other_files(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text('{"format": "something else"}')
    with pytest.raises(InputError, match="not a crossgraph benchmark results file"):
        benchmark.load(tmp_path / "x.json")
    with pytest.raises(InputError, match="cannot read"):
        benchmark.load(tmp_path / "missing.json")


def test_readme_section_is_replaced_between_the_markers(quick_run: tuple[int, Path, str], tmp_path: Path) -> None:
    render = bench_module("render")
    _, path, _ = quick_run
    readme = path.parent / "README.md"
    readme.write_text(f"# x\n\n{render.BEGIN}\nold table\n{render.END}\n\n## after\n")
    render.update_readme(readme, path, "python bench/run.py")
    text = readme.read_text()
    assert "old table" not in text and "## after" in text and text.count(render.BEGIN) == 1
    assert "Reproduce with `python bench/run.py`" in text and "| onnx | target |" in text
    readme.write_text("no markers")
    with pytest.raises(SystemExit, match="no <!-- bench:begin -->"):
        render.update_readme(readme, path, "python bench/run.py")

"""Quantized GPT-2 small on ONNX Runtime against the float model and against ONNX Runtime's own quantizer.

    python bench/quantization.py           # writes bench/results/quant-<machine>-<date>.{json,md}
    python bench/quantization.py --quick   # GPT-2 tiny, few runs, into bench/results/quick/

Per batch size (sequence 128), in one process, 2 intra-op threads: crossgraph's float ONNX model (serve-onnx),
its int8 schemes (dynamic, static, int8/int4 weight-only) and the peer a user reaches for,
`onnxruntime.quantization.quantize_dynamic` on the `torch.onnx.export(dynamo=True)` model (its defaults), with
that peer's float model beside it. Latency is the median of interleaved rounds (compiler.benchmark.timing);
accuracy is the cosine similarity of the logits with the model run eagerly in float32; size is the saved
model's bytes. Ratios: peer dynamic / ours dynamic, ours float / each of ours quantized, file size / float.
Each timed call follows an untimed call of the same session (`Runs.lead_in`): the first call after another
session's carries a fixed cost of its own (about 25 ms at 2 threads here, see bench/README.md), which a process
serving one model never pays.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from crossgraph.compiler import onnx_rt
from crossgraph.compiler.benchmark import Runs, machine, pin_threads
from crossgraph.compiler.benchmark.timing import measure
from crossgraph.compiler.quantization import quantize, text_batches
from crossgraph.graphs import capture
from crossgraph.graphs.functional import FunctionalModule
from crossgraph.models import gpt2
from crossgraph.passes import PassManager, expand

sys.path.insert(0, str(Path(__file__).resolve().parent))
from render import write_results  # noqa: E402  (the script beside this one)

ROOT = Path(__file__).resolve().parent.parent
THREADS = 2
SCHEMES = ("dynamic", "static", "int8", "int4")


def _ours(graph: Any, scheme: str | None, calibration: list[tuple[torch.Tensor]]) -> Any:
    """Our ONNX model for `scheme` (None: float), after the serve-onnx pipeline."""
    if scheme is not None:
        graph = quantize(graph, scheme, calibration=calibration if scheme == "static" else None, progress=False)
    return onnx_rt.export(PassManager(expand(["serve-onnx"])).run(graph).graph)


def _peer(model: Any, inputs: tuple[torch.Tensor, ...], workdir: Path) -> tuple[Any, Any]:
    """torch.onnx.export(dynamo=True) of the model as written, and quantize_dynamic's model of it (defaults)."""
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    with onnx_rt.quiet_exporter():
        program = torch.onnx.export(FunctionalModule(model).eval(), inputs, dynamo=True, verbose=False)
    float_path, int8_path = workdir / "peer.onnx", workdir / "peer-int8.onnx"
    onnx.save(program.model_proto, float_path)
    quantize_dynamic(float_path, int8_path)
    return program.model_proto, onnx.load(int8_path)


def _session(model: Any) -> Callable[[np.ndarray], np.ndarray]:
    session = onnx_rt.OnnxSession(model, ["CPUExecutionProvider"], threads=THREADS)
    return lambda ids: session(ids)[0]


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def run_batch(model: Any, config: gpt2.GPT2Config, batch: int, runs: Runs, workdir: Path) -> dict[str, Any]:
    """Every model at one batch size: latency, cosine vs eager float32, file size, and the ratios."""
    inputs = gpt2.example_inputs(config, batch=batch, seq=128, seed=1)
    graph = capture(model, inputs)
    calibration = text_batches(config.vocab_size, batch, 128, limit=8)
    models = {"ours-float": _ours(graph, None, calibration)}
    models.update({f"ours-{s}": _ours(graph, s, calibration) for s in SCHEMES})
    models["peer-float"], models["peer-dynamic"] = _peer(model, inputs, workdir)
    with torch.no_grad():
        reference = model(*inputs).numpy()
    ids = inputs[0].numpy()
    calls = {name: _session(m) for name, m in models.items()}
    cosine = {name: _cosine(call(ids), reference) for name, call in calls.items()}
    latency = measure({name: (lambda c=call: c(ids)) for name, call in calls.items()}, runs)
    median = {name: lat.median for name, lat in latency.items()}
    size = {name: m.ByteSize() for name, m in models.items()}
    return {
        "latency": {name: lat.to_json() for name, lat in latency.items()},
        "cosine": cosine, "bytes": size,
        "ratios": {
            "peer-dynamic / ours-dynamic (speedup)": median["peer-dynamic"] / median["ours-dynamic"],
            **{f"ours-float / ours-{s} (speedup)": median["ours-float"] / median[f"ours-{s}"] for s in SCHEMES},
            **{f"ours-{s} bytes / ours-float bytes": size[f"ours-{s}"] / size["ours-float"] for s in SCHEMES},
        },
    }


def markdown(results: dict[str, Any]) -> str:
    """The results as tables: per batch, each model's median, cosine and size; then the ratios."""
    m = results["machine"]
    lines = [f"# Quantized GPT-2 ({results['model']}) on ONNX Runtime", "",
             f"{m['cpu']}, {m['threads']} threads, onnxruntime {m['libraries'].get('onnxruntime')}, "
             f"torch {m['libraries'].get('torch')}; sequence 128; medians of {results['runs']['runs']}+ "
             f"interleaved rounds, each timed call after {results['runs'].get('lead_in', 0)} untimed call(s) of "
             "the same session.", ""]
    for batch, data in results["batches"].items():
        lines += [f"## batch {batch}", "", "| model | median ms | cosine vs fp32 eager | MB |", "|---|---|---|---|"]
        for name, lat in data["latency"].items():
            lines.append(f"| {name} | {lat['median'] * 1e3:.2f} | {data['cosine'][name]:.6f} | "
                         f"{data['bytes'][name] / 2**20:.1f} |")
        lines += ["", "| ratio | value |", "|---|---|"]
        lines += [f"| {name} | {value:.2f} |" for name, value in data["ratios"].items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="GPT-2 tiny, few runs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    pin_threads(THREADS)
    config = (gpt2.GPT2Config(vocab_size=128, n_positions=128, n_embd=32, n_layer=2, n_head=4) if args.quick
              else gpt2.GPT2Config.small())
    runs = (Runs(warmup=1, runs=3, min_seconds=0) if args.quick
            else Runs(warmup=3, runs=20, min_seconds=2.0, lead_in=1))
    model = gpt2.model(config)
    results: dict[str, Any] = {"model": "tiny" if args.quick else "small", "runs": runs.__dict__,
                               "machine": machine.describe(THREADS), "batches": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for batch in (1, 8):
            print(f"batch {batch} ...", flush=True)
            results["batches"][str(batch)] = run_batch(model, config, batch, runs, Path(tmp))
    text = markdown(results)
    stem = write_results(args.out / "quick" if args.quick else args.out, "quant", results, text)
    print(text)
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What each quantization scheme does to a language model that has learned something: byte-level GPT-2 and Llama
trained on the text set, quantized, their perplexity on that text measured before and after.

    python bench/quant_accuracy.py           # writes bench/results/quant-accuracy-<machine>-<date>.{json,md}
    python bench/quant_accuracy.py --quick   # a few steps only (a smoke test), into bench/results/quick/

The repository's models have random weights, so their perplexity on text is about the vocabulary size whatever
the scheme. Here each model (vocabulary 128: the text is ASCII, one token a byte) is first trained on the text
set's windows [8, 64] (`compiler.quantization.text_batches`) with the compiled AdamW step
(`compiler.training.make_train_step`) until its mean loss over one pass of the windows is below 1.0 (perplexity
2.7; log 128 = 4.85 untrained); seeds are fixed and algorithms deterministic, so a run repeats exactly. Then, per
scheme, `quantization.accuracy` compares the quantized graph with the float graph on every window: worst cosine
of the logits, max abs error, and perplexity float -> quantized. Static int8 calibrates on the same windows.

QAT: the trained GPT-2 is fine-tuned further with `qat.fake_quant` (int8 weights, dynamic uint8 activations,
as the dynamic scheme deploys) and, for a fair comparison, the same number of steps without fake-quant; each
fine-tuned model is then quantized with the dynamic scheme, next to the dynamic quantization of the model before
fine-tuning. Both fine-tunes go on from the training's AdamW state at its learning rate (a fresh state would
start with steps of the full learning rate on every weight, a jolt that would blur the comparison).

The text set is small (2.7 kB) and is both the training and the evaluation data: the perplexities measure how
much quantization moves a model that fits this text, not how well the model generalizes.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

from crossgraph.compiler.benchmark import machine, pin_threads
from crossgraph.compiler.qat import fake_quant
from crossgraph.compiler.quantization import SCHEMES, accuracy, quantize, text_batches
from crossgraph.compiler.training import TrainStep, make_train_step
from crossgraph.graphs import FunctionalModel, Graph, capture, flatten_tree
from crossgraph.models import gpt2, llama

sys.path.insert(0, str(Path(__file__).resolve().parent))
from render import write_results  # noqa: E402  (the script beside this one)

ROOT = Path(__file__).resolve().parent.parent
THREADS = 2
VOCAB, BATCH, SEQ = 128, 8, 64
LR = 1e-3
SEED = 0

Batches = list[tuple[torch.Tensor]]


@dataclasses.dataclass(frozen=True)
class Plan:
    """How long to train: from scratch until the mean loss over one pass of the windows is below `target_loss`
    (at most `max_steps`), then `finetune_steps` for each fine-tune of the QAT comparison."""

    target_loss: float
    max_steps: int
    finetune_steps: int


FULL, QUICK = Plan(target_loss=1.0, max_steps=800, finetune_steps=25), Plan(1.0, max_steps=4, finetune_steps=2)

MODELS: dict[str, Callable[[], FunctionalModel]] = {
    "gpt2": lambda: gpt2.model(gpt2.GPT2Config(vocab_size=VOCAB, n_positions=128, n_embd=128, n_layer=4, n_head=4),
                               seed=SEED),
    "llama": lambda: llama.model(llama.LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=384,
                                                   num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                                   max_position_embeddings=128), seed=SEED),
}
"""The byte-level models, about 0.8M parameters each: 4 layers of width 128 (Llama with 2 key/value heads)."""


def parameter_count(model: FunctionalModel) -> int:
    """How many numbers the model's parameter tree holds."""
    return sum(leaf.numel() for leaf in flatten_tree(model.params).values())


def train(step: TrainStep, model: FunctionalModel, batches: Batches, steps: int, label: str, *,
          state: Any = None, target_loss: float | None = None) -> tuple[FunctionalModel, Any, dict[str, Any]]:
    """`model` after `steps` steps of `step` cycling through `batches` from optimizer `state` (None: fresh), or
    fewer once the mean loss over the last pass of `batches` is below `target_loss`; then the final optimizer
    state and a record of the run: losses, the time of the first call (which compiles) and of the rest."""
    params, history = model.params, []
    state = step.init(params) if state is None else state
    start = time.perf_counter()
    for i in range(steps):
        params, state, loss, _ = step(params, state, *batches[i % len(batches)])
        history.append(float(loss))
        if i == 0:
            compiled = time.perf_counter()
        if (i + 1) % 50 == 0:
            print(f"    {label} step {i + 1}: loss {history[-1]:.3f}", flush=True)
        if target_loss is not None and len(history) >= len(batches) and _pass_loss(history, batches) < target_loss:
            break
    done = time.perf_counter()
    print(f"  {label}: {len(history)} steps, loss {history[0]:.3f} -> {history[-1]:.3f} "
          f"(compile + first step {compiled - start:.0f} s, then {done - compiled:.0f} s)", flush=True)
    return dataclasses.replace(model, params=params), state, {
        "steps": len(history), "lr": step.optimizer.lr, "loss_first": history[0],
        "loss_last_pass": _pass_loss(history, batches), "loss_every_10": history[::10],
        "compile_and_first_step_s": compiled - start, "train_s": done - compiled}


def _pass_loss(history: list[float], batches: Batches) -> float:
    """The mean loss of the last steps, one per batch (fewer if there were fewer steps)."""
    last = history[-len(batches):]
    return sum(last) / len(last)


def evaluate(graph: Graph, scheme: str, batches: Batches) -> dict[str, Any]:
    """`graph` quantized with `scheme` against itself on every window; the error as text where a step fails."""
    start = time.perf_counter()
    try:
        quantized = quantize(graph, scheme, calibration=batches if SCHEMES[scheme].calibrated else None,
                             progress=False)
        result: dict[str, Any] = accuracy(graph, quantized, batches).to_json()
    except Exception as exc:  # a failing scheme is a row in the table, not the end of the run
        result = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    result["seconds"] = time.perf_counter() - start
    print(f"  {scheme}: " + (result.get("error") or _summary(result)), flush=True)
    return result


def _summary(row: dict[str, Any]) -> str:
    """One line of a result: cosine and perplexity float -> quantized."""
    return (f"cosine {_number(row['cosine'], '.6f')}, perplexity {_number(row['perplexity_float'], '.3f')} -> "
            f"{_number(row['perplexity_quantized'], '.3f')} ({_change(row)})")


def _number(value: float | None, spec: str) -> str:
    """The value formatted, or "NaN" for None (non-finite quantized outputs)."""
    return "NaN" if value is None else format(value, spec)


def _change(row: dict[str, Any]) -> str:
    """The relative perplexity change quantized / float - 1, as a signed percentage."""
    if row.get("perplexity_quantized") is None or row.get("perplexity_float") is None:
        return "n/a"
    return f"{row['perplexity_quantized'] / row['perplexity_float'] - 1:+.2%}"


def schemes(model: FunctionalModel, batches: Batches, names: tuple[str, ...]) -> dict[str, Any]:
    """Every scheme in `names` applied to `model` captured at the windows' shape."""
    graph = capture(model, batches[0])
    return {name: evaluate(graph, name, batches) for name in names}


def qat_comparison(step: TrainStep, trained: FunctionalModel, state: Any, batches: Batches,
                   steps: int) -> dict[str, Any]:
    """Dynamic int8 of the trained model, of it trained on in float, and of it trained on with fake-quant; both
    continue from the training's optimizer `state`."""
    qat_step = make_train_step(fake_quant(trained), "next_token", optimizer="adamw", lr=step.optimizer.lr)
    float_tuned, _, float_run = train(step, trained, batches, steps, "float fine-tune", state=state)
    qat_tuned, _, qat_run = train(qat_step, trained, batches, steps, "QAT fine-tune", state=state)
    rows = {}
    for label, model, run in (("PTQ, no fine-tune", trained, None),
                              (f"float fine-tune +{steps}, PTQ", float_tuned, float_run),
                              (f"QAT fine-tune +{steps}", qat_tuned, qat_run)):
        print(f" {label}", flush=True)
        rows[label] = {"finetune": run, "dynamic": schemes(model, batches, ("dynamic",))["dynamic"]}
    return rows


def markdown(results: dict[str, Any]) -> str:
    """One table of schemes per model, then the QAT table."""
    m = results["machine"]
    lines = ["# Quantization accuracy of byte-level language models trained on the text set", "",
             f"{m['cpu']}, {m['threads']} threads, torch {m['libraries'].get('torch')}. Windows [{BATCH}, {SEQ}] "
             f"of `compiler/data/perplexity.txt` (vocabulary {VOCAB}), the training data too; AdamW lr {LR}, "
             f"seed {SEED}. Cosine: the worst over the windows, of the logits against the float graph's.", ""]
    for name, data in results["models"].items():
        run = data["training"]
        lines += [f"## {name} ({data['parameters'] / 1e6:.2f}M parameters)", "",
                  f"Trained {run['steps']} steps: loss {run['loss_first']:.3f} at the first, "
                  f"{run['loss_last_pass']:.3f} over the last pass of the windows (log {VOCAB} = "
                  f"{math.log(VOCAB):.3f}).", "",
                  *_table(data["schemes"]), ""]
    if "qat" in results:
        lines += [f"## QAT on {results['qat']['model']}: dynamic int8 after equal fine-tuning", "",
                  "Each row's float perplexity is its own weights run in float; the QAT row's weights are the ones "
                  "trained through fake-quant. Compare the quantized perplexities. QAT rounds the linears read by "
                  "`F.linear`; GPT-2's tied LM head (`h @ wte.T`) trains in float, though the dynamic scheme "
                  "quantizes it too. Fine-tune loss, first step -> last pass:", "",
                  *(f"- {label}: loss {row['finetune']['loss_first']:.3f} -> {row['finetune']['loss_last_pass']:.3f}"
                    for label, row in results["qat"]["rows"].items() if row["finetune"]), "",
                  *_table({label: row["dynamic"] for label, row in results["qat"]["rows"].items()}, "model"), ""]
    return "\n".join(lines)


def _table(rows: dict[str, dict[str, Any]], first: str = "scheme") -> list[str]:
    """A Markdown table: cosine, max abs err, perplexity float -> quantized and the change, per row."""
    lines = [f"| {first} | cosine | max abs err | perplexity float | perplexity quantized | change |",
             "|---|---|---|---|---|---|"]
    for name, row in rows.items():
        if "error" in row:
            lines.append(f"| {name} | failed: {row['error'].replace('|', '/')} | | | | |")
            continue
        lines.append(f"| {name} | {_number(row['cosine'], '.6f')} | {row['max_abs_err']:.3g} | "
                     f"{_number(row['perplexity_float'], '.4f')} | {_number(row['perplexity_quantized'], '.4f')} | "
                     f"{_change(row)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few training steps, results into quick/")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    pin_threads(THREADS)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")  # torch's own
    # Inductor's CPU kernels for the embedding backward (a scatter-add) accumulate with atomics across threads
    # otherwise: two runs of the compiled step then part in the 4th digit after a few dozen steps.
    torch.use_deterministic_algorithms(True)
    plan = QUICK if args.quick else FULL
    batches = text_batches(VOCAB, BATCH, SEQ, limit=64)
    results: dict[str, Any] = {"machine": machine.describe(THREADS), "plan": dataclasses.asdict(plan),
                               "batch": BATCH, "seq": SEQ, "vocab": VOCAB, "windows": len(batches) * BATCH,
                               "models": {}}
    start = time.perf_counter()
    for name, factory in MODELS.items():
        print(f"{name}: training", flush=True)
        model = factory()
        step = make_train_step(model, "next_token", optimizer="adamw", lr=LR)
        trained, state, run = train(step, model, batches, plan.max_steps, "train", target_loss=plan.target_loss)
        print(f"{name}: schemes", flush=True)
        results["models"][name] = {"parameters": parameter_count(model), "training": run,
                                   "schemes": schemes(trained, batches, tuple(SCHEMES))}
        if name == "gpt2":
            print(f"{name}: QAT against float fine-tuning", flush=True)
            results["qat"] = {"model": name, "rows": qat_comparison(step, trained, state, batches,
                                                                   plan.finetune_steps)}
    results["total_s"] = time.perf_counter() - start
    text = markdown(results)
    stem = write_results(args.out / "quick" if args.quick else args.out, "quant-accuracy", results, text)
    print(text)
    print(f"total {results['total_s']:.0f} s; wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

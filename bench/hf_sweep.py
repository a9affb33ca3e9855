"""Breadth sweep: `crossgraph.compiler.check` over many Hugging Face architectures, built with
`AutoConfig.for_model(model_type, **tiny sizes)` + `AutoModel*.from_config` (random weights, no downloads).

Every architecture is called the way its users call it, with keyword inputs:

- decoder LMs: `AutoModelForCausalLM` (the `logits` output; `use_cache=False` in the config so no cache is
  returned), `input_ids` and an `attention_mask` with LEFT padding (row 0's first three positions are 0);
- encoders: `AutoModel` (`last_hidden_state`, and the pooler where the model has one), same inputs;
- vision: `AutoModel` on `pixel_values` (2 x 3 x 32 x 32, patch 8 where the model has patches);
- seq2seq: `AutoModel` with `input_ids`, `attention_mask` and `decoder_input_ids` (T5, BART, ...), Whisper with
  `input_features` and `decoder_input_ids`;
- multimodal: CLIP/SigLIP `AutoModel` with `input_ids` (+ `attention_mask` for CLIP) and `pixel_values`.

Each architecture runs in its own subprocess with a timeout, so a hang or a crash (a dead interpreter) cannot
stop the sweep; its result is written (atomically: temp file + os.replace) after every architecture to
`--out`'s `.json` and `.md`. Outcome per architecture and target:

  pass         within tolerance
  fail         out of tolerance (the first line says how far, and the first divergent node when localized)
  unsupported  an InputError (CaptureError, UnsupportedOpError: exit 2) naming the op or construct; a capture
               error marks every target
  crash        an internal error: a target that errored with anything but an InputError (a PassError from a
               pass included), an exception from check that is not an InputError, or a dead subprocess
  timeout      the subprocess ran past --timeout (counted with crash: the sweep could not finish it)
  skipped      the target could not run here (reason given)

Run: `python bench/hf_sweep.py` (every architecture on eager,onnx,jax,inductor), or e.g.
`python bench/hf_sweep.py --archs llama,bert --targets eager,onnx,jax --out bench/results/quick/hf-sweep`.
`--merge` keeps the entries of an existing results file and replaces only the (architecture, target) cells this
run measured: run the fast targets first, then `--targets inductor --merge` into the same file.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from crossgraph.compiler.artifact import write_atomically

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve()
"""The script each architecture's subprocess runs (`--worker NAME`)."""
DEFAULT_TARGETS = ("eager", "onnx", "jax", "inductor")
VOCAB = 128
BATCH, SEQ = 2, 12

# --------------------------------------------------------------------------------------------- inputs

def padded_mask(batch: int = BATCH, seq: int = SEQ) -> torch.Tensor:
    """All ones but the first three positions of row 0 (left padding)."""
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, :3] = 0
    return mask


def text_inputs(vocab: int = VOCAB, seq: int = SEQ, mask: bool = True) -> dict[str, torch.Tensor]:
    out = {"input_ids": torch.randint(3, vocab, (BATCH, seq))}
    if mask:
        out["attention_mask"] = padded_mask(BATCH, seq)
    return out


def image_inputs(size: int = 32, channels: int = 3) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(BATCH, channels, size, size)}


# --------------------------------------------------------------------------------------------- configs

_LM = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
           max_position_embeddings=64, use_cache=False, pad_token_id=0, bos_token_id=1, eos_token_id=2)
_ENC = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64, pad_token_id=0)
_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=8)


class Arch:
    """One architecture: its family, the transformers model_type, the Auto class and the config overrides,
    and the inputs it takes."""

    def __init__(self, family: str, model_type: str, auto: str, config: dict[str, Any],
                 inputs: Callable[[], dict[str, torch.Tensor]], note: str = "") -> None:
        self.family, self.model_type, self.auto, self.config, self.inputs = family, model_type, auto, config, inputs
        self.note = note

    def build(self) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
        import transformers
        torch.manual_seed(0)
        config = transformers.AutoConfig.for_model(self.model_type, **self.config)
        model = getattr(transformers, self.auto).from_config(config).eval()
        torch.manual_seed(1)
        return model, self.inputs()


def _lm(model_type: str, note: str = "", **over: Any) -> Arch:
    return Arch("decoder", model_type, "AutoModelForCausalLM", {**_LM, **over}, text_inputs, note)


def _enc(model_type: str, note: str = "", inputs: Callable[[], dict[str, torch.Tensor]] = text_inputs,
         **over: Any) -> Arch:
    return Arch("encoder", model_type, "AutoModel", {**_ENC, **over}, inputs, note)


def _vision(model_type: str, note: str = "", **over: Any) -> Arch:
    return Arch("vision", model_type, "AutoModel", over, image_inputs, note)


def _seq2seq_inputs() -> dict[str, torch.Tensor]:
    return {**text_inputs(seq=10), "decoder_input_ids": torch.randint(3, VOCAB, (BATCH, 6))}


def _whisper_inputs() -> dict[str, torch.Tensor]:
    return {"input_features": torch.randn(BATCH, 16, 32), "decoder_input_ids": torch.randint(3, VOCAB, (BATCH, 5))}


def _clip_inputs() -> dict[str, torch.Tensor]:
    return {**text_inputs(seq=9), **image_inputs()}


def _siglip_inputs() -> dict[str, torch.Tensor]:
    return {**text_inputs(seq=9, mask=False), **image_inputs()}


_SEQ2SEQ = dict(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, use_cache=False)

_MOE = dict(num_local_experts=4, num_experts_per_tok=2)

ARCHS: dict[str, Arch] = {
    # decoder LMs (AutoModelForCausalLM: logits)
    "gpt2": _lm("gpt2", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64),
    "llama": _lm("llama", num_key_value_heads=2),
    "mistral": _lm("mistral", num_key_value_heads=2, sliding_window=None),
    "qwen2": _lm("qwen2", num_key_value_heads=2),
    "qwen3": _lm("qwen3", num_key_value_heads=2, head_dim=16),
    "phi3": _lm("phi3", num_key_value_heads=2),
    "gemma": _lm("gemma", num_key_value_heads=2, head_dim=16),
    "gemma2": _lm("gemma2", num_key_value_heads=2, head_dim=16, sliding_window=8),
    "gemma3_text": _lm("gemma3_text", num_key_value_heads=2, head_dim=16, sliding_window=8),
    "gpt_neox": _lm("gpt_neox"),
    "opt": _lm("opt", ffn_dim=64, word_embed_proj_dim=32),
    "bloom": _lm("bloom", n_layer=2, n_head=2),
    "falcon": _lm("falcon"),
    "starcoder2": _lm("starcoder2", num_key_value_heads=2),
    "olmo": _lm("olmo", num_key_value_heads=2),
    "olmo2": _lm("olmo2", num_key_value_heads=2),
    "granite": _lm("granite", num_key_value_heads=2),
    "stablelm": _lm("stablelm", num_key_value_heads=2),
    "mixtral": _lm("mixtral", num_key_value_heads=2, **_MOE),
    "qwen3_moe": _lm("qwen3_moe", num_key_value_heads=2, head_dim=16, num_experts=4, num_experts_per_tok=2,
                     moe_intermediate_size=32, decoder_sparse_step=1),
    "gptj": _lm("gptj", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64, rotary_dim=8),
    "codegen": _lm("codegen", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64, n_ctx=64,
                   rotary_dim=8),
    "phi": _lm("phi"),
    "gpt_bigcode": _lm("gpt_bigcode", vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=64),
    # encoders (AutoModel)
    "bert": _enc("bert"),
    "roberta": _enc("roberta", max_position_embeddings=72),
    "xlm-roberta": _enc("xlm-roberta", max_position_embeddings=72),
    "distilbert": _enc("distilbert", dim=32, n_layers=2, n_heads=2, hidden_dim=64),
    "electra": _enc("electra", embedding_size=32),
    "albert": _enc("albert", embedding_size=16),
    "deberta-v2": _enc("deberta-v2"),
    "modernbert": _enc("modernbert", global_attn_every_n_layers=2, local_attention=8, bos_token_id=1,
                        eos_token_id=2, cls_token_id=1, sep_token_id=2),
    "mpnet": _enc("mpnet", max_position_embeddings=72),
    "camembert": _enc("camembert", max_position_embeddings=72),
    "mobilebert": _enc("mobilebert", embedding_size=16, intra_bottleneck_size=32, true_hidden_size=32,
                       num_feedforward_networks=2),
    "ernie": _enc("ernie"),
    # vision (AutoModel on pixel_values)
    "vit": _vision("vit", **_VIT),
    "deit": _vision("deit", **_VIT),
    "dinov2": _vision("dinov2", **_VIT, mlp_ratio=2),
    "beit": _vision("beit", **_VIT),
    "convnext": _vision("convnext", hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1]),
    "resnet": _vision("resnet", embedding_size=16, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1]),
    "swin": _vision("swin", image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2],
                    window_size=4),
    "segformer": _vision("segformer", num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32],
                         patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2],
                         decoder_hidden_size=32),
    "regnet": _vision("regnet", embedding_size=16, hidden_sizes=[16, 32, 48, 64], depths=[1, 1, 1, 1],
                      groups_width=8),
    # seq2seq and audio (AutoModel)
    "t5": Arch("seq2seq", "t5", "AutoModel", dict(vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=64, num_layers=2,
                                                  num_decoder_layers=2, num_heads=2, decoder_start_token_id=0,
                                                  use_cache=False), _seq2seq_inputs),
    "bart": Arch("seq2seq", "bart", "AutoModel", _SEQ2SEQ, _seq2seq_inputs),
    "mbart": Arch("seq2seq", "mbart", "AutoModel", _SEQ2SEQ, _seq2seq_inputs),
    "whisper": Arch("audio", "whisper", "AutoModel",
                    dict(vocab_size=VOCAB, num_mel_bins=16, encoder_layers=2, decoder_layers=2,
                         encoder_attention_heads=2, decoder_attention_heads=2, d_model=32, encoder_ffn_dim=64,
                         decoder_ffn_dim=64, max_source_positions=16, max_target_positions=32, pad_token_id=0,
                         bos_token_id=1, eos_token_id=2, decoder_start_token_id=1, use_cache=False),
                    _whisper_inputs),
    # multimodal (AutoModel)
    "clip": Arch("multimodal", "clip", "AutoModel",
                 dict(text_config=dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=16),
                      vision_config=dict(_VIT), projection_dim=16), _clip_inputs),
    "siglip": Arch("multimodal", "siglip", "AutoModel",
                   dict(text_config=dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, max_position_embeddings=16),
                        vision_config=dict(_VIT)), _siglip_inputs),
}


# --------------------------------------------------------------------------------------------- one architecture

def first_line(text: str | None) -> str:
    return next((line.strip() for line in (text or "").splitlines() if line.strip()), "")


def _cell(result: Any) -> dict[str, Any]:
    """One target's outcome as the sweep reports it."""
    status, error = result.status, result.error
    cell: dict[str, Any] = {"seconds": round(result.seconds, 2)}
    if status == "pass":
        cell.update(status="pass", max_abs_err=result.max_abs_err)
    elif status == "fail":
        node = result.first_divergent_node or {}
        where = f"; first divergent node {node.get('node') or node.get('name')}" if node else ""
        said = first_line(result.error) or f"max_abs_err {result.max_abs_err:.3g}"
        cell.update(status="fail", max_abs_err=result.max_abs_err,
                    error=f"{said} (atol {result.atol}, rtol {result.rtol}){where}",
                    first_divergent_node=_jsonable(node) if node else None)
    elif status == "error":
        cell.update(status="unsupported" if result.bad_input else "crash", error=first_line(error),
                    detail=(error or "")[-2000:])
        if "PassError" in (error or ""):
            cell["pass_crash"] = True
    else:
        cell.update(status=status, error=first_line(error))
    return cell


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def run_one(name: str, targets: list[str]) -> dict[str, Any]:
    """Build and check one architecture in this process: {"targets": {t: cell}, ...}."""
    import traceback

    from crossgraph.compiler import check
    from crossgraph.graphs.errors import InputError
    arch = ARCHS[name]
    start = time.perf_counter()
    out: dict[str, Any] = {"family": arch.family, "model_type": arch.model_type, "auto": arch.auto}
    try:
        model, kwargs = arch.build()
    except Exception as exc:
        error = f"building the model failed: {type(exc).__name__}: {first_line(str(exc))}"
        out["targets"] = {t: {"status": "crash", "error": error, "stage": "build"} for t in targets}
        out["seconds"] = round(time.perf_counter() - start, 2)
        return out
    out["parameters"] = sum(p.numel() for p in model.parameters())
    out["inputs"] = {k: list(v.shape) for k, v in kwargs.items()}
    try:
        report = check(model, (), targets, kwargs=kwargs, examples=1)
    except InputError as exc:
        error = f"{type(exc).__name__}: {first_line(str(exc))}"
        out["targets"] = {t: {"status": "unsupported", "error": error, "stage": "capture"} for t in targets}
    except Exception as exc:
        tb = "".join(traceback.format_exception(exc)[-3:])
        error = f"{type(exc).__name__}: {first_line(str(exc))}"
        out["targets"] = {t: {"status": "crash", "error": error, "stage": "check", "detail": tb[-2000:]}
                          for t in targets}
    else:
        out["capture_seconds"] = round(report.capture_seconds, 2)
        out["targets"] = {t: _cell(r) for t, r in report.targets.items()}
    out["seconds"] = round(time.perf_counter() - start, 2)
    return out


# --------------------------------------------------------------------------------------------- the sweep

def _run_subprocess(name: str, targets: list[str], timeout: float) -> dict[str, Any]:
    """Run one architecture in a fresh interpreter; a dead or hung one becomes crash/timeout cells."""
    with tempfile.TemporaryDirectory(prefix="hf-sweep-") as tmp:
        result_path = Path(tmp) / "result.json"
        log_path = Path(tmp) / "log.txt"
        cmd = [sys.executable, str(WORKER), "--worker", name, "--targets", ",".join(targets),
               "--result-file", str(result_path)]
        start = time.perf_counter()
        with open(log_path, "w") as log:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                rc = None
        seconds = round(time.perf_counter() - start, 2)
        if result_path.exists():
            out = json.loads(result_path.read_text())
            out["wall_seconds"] = seconds
            return out
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        arch = ARCHS[name]
        if rc is None:
            cell = {"status": "timeout", "error": f"no result after {timeout:.0f} s (killed)"}
        else:
            cell = {"status": "crash", "error": f"subprocess died (exit {rc}): {tail[-1] if tail else ''}",
                    "detail": "\n".join(tail)}
        return {"family": arch.family, "model_type": arch.model_type, "auto": arch.auto,
                "targets": {t: dict(cell) for t in targets}, "wall_seconds": seconds}


def summary(results: dict[str, Any], targets: list[str]) -> dict[str, Any]:
    counts: dict[str, int] = {}
    all_pass = 0
    for entry in results.values():
        cells = [entry["targets"].get(t, {}).get("status", "not run") for t in targets]
        for s in cells:
            counts[s] = counts.get(s, 0) + 1
        all_pass += all(s == "pass" for s in cells)
    n = len(results)
    pass_crashes = sum(1 for e in results.values() for c in e["targets"].values() if c.get("pass_crash"))
    return {"architectures": n, "pass_every_target": all_pass,
            "pass_rate": round(all_pass / n, 4) if n else None, "cells": counts,
            "internal_errors": counts.get("crash", 0), "timeouts": counts.get("timeout", 0),
            "pass_crashes": pass_crashes}


def _all_targets(results: dict[str, Any], preferred: list[str]) -> list[str]:
    seen = [t for t in preferred]
    for entry in results.values():
        seen += [t for t in entry["targets"] if t not in seen]
    order = {t: i for i, t in enumerate(DEFAULT_TARGETS)}
    return sorted(seen, key=lambda t: order.get(t, len(order)))


def markdown(doc: dict[str, Any]) -> str:
    results, targets = doc["results"], doc["targets"]
    s = doc["summary"]
    lines = [f"# HF breadth sweep, {doc['date']}", "",
             f"{s['pass_every_target']}/{s['architectures']} architectures pass every target "
             f"({100 * (s['pass_rate'] or 0):.1f}%); internal errors (crash): {s['internal_errors']}; "
             f"timeouts: {s['timeouts']}; pass crashes: {s['pass_crashes']}. Cells: "
             + ", ".join(f"{k} {v}" for k, v in sorted(s["cells"].items())) + ".", "",
             f"Machine: {doc['machine']}; torch {doc['versions'].get('torch')}, transformers "
             f"{doc['versions'].get('transformers')}. Command: `{doc['command']}`. Sweep time: "
             f"{doc.get('sweep_seconds', '?')} s"
             + ("".join(f"; `{r['command']}` {r['sweep_seconds']} s" for r in doc.get("runs", []))) + ".", "",
             *([doc["note"], ""] if doc.get("note") else []),
             "| architecture | family | called as | " + " | ".join(targets) + " | seconds (last run) |",
             "|---|---|---|" + "---|" * len(targets) + "---|"]
    for name, entry in results.items():
        cells = []
        for t in targets:
            c = entry["targets"].get(t)
            cells.append("—" if c is None else c["status"] if c["status"] == "pass" else f"**{c['status']}**")
        secs = entry.get("wall_seconds", entry.get("seconds", ""))
        lines.append(f"| {name} | {entry['family']} | {entry['auto']} | " + " | ".join(cells) + f" | {secs} |")
    problems = [(name, t, c) for name, e in results.items() for t, c in e["targets"].items()
                if c["status"] not in ("pass",)]
    if problems:
        lines += ["", "## Not passing (first error line)", ""]
        for name, t, c in problems:
            err = (c.get("error") or "").replace("|", "\\|")
            lines.append(f"- **{name}** / {t}: {c['status']} — {err[:400]}")
    return "\n".join(lines) + "\n"


def _versions() -> dict[str, str]:
    import importlib.metadata as md
    out = {}
    for pkg in ("torch", "transformers", "onnxruntime", "onnx", "jax"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _machine() -> str:
    import platform
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs"


def _merged(results: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`results` with each architecture's cells replaced by `new`'s where it has them."""
    out = dict(results)
    for name, entry in new.items():
        old = out.get(name, {})
        out[name] = {**old, **entry, "targets": {**old.get("targets", {}), **entry["targets"]}}
    return out


def _write(doc: dict[str, Any], out: Path) -> None:
    write_atomically(out.with_suffix(".json"), json.dumps(doc, indent=1) + "\n")
    write_atomically(out.with_suffix(".md"), markdown(doc))


def combine(files: list[Path], out: Path, note: str = "") -> dict[str, Any]:
    """One results file from several (later files' cells win), e.g. a fast-targets run and an inductor run;
    the sweep time is the sum of theirs (`runs` keeps each; runs that overlapped took less wall time)."""
    docs = [json.loads(f.read_text()) for f in files]
    results: dict[str, Any] = {}
    for d in docs:
        results = _merged(results, d["results"])
    doc = {**docs[0], "command": "; ".join(d["command"] for d in docs),
           "sweep_seconds": round(sum(d.get("sweep_seconds", 0) for d in docs), 1),
           "runs": [{"command": d["command"], "sweep_seconds": d.get("sweep_seconds")} for d in docs]}
    targets = _all_targets(results, [])
    doc.update(targets=targets, results=results, summary=summary(results, targets))
    if note:
        doc["note"] = note
    _write(doc, out)
    return doc


def sweep(names: list[str], targets: list[str], out: Path, timeout: float, merge: bool) -> dict[str, Any]:
    json_path = out.with_suffix(".json")
    results: dict[str, Any] = {}
    previous_seconds = 0.0
    if merge and json_path.exists():
        previous = json.loads(json_path.read_text())
        results, previous_seconds = previous.get("results", {}), previous.get("sweep_seconds", 0.0)
    doc = {"format": "crossgraph.hf-sweep/1", "date": _dt.date.today().isoformat(), "machine": _machine(),
           "versions": _versions(), "command": " ".join(["python bench/hf_sweep.py", *sys.argv[1:]]),
           "timeout": timeout}
    started = time.perf_counter()
    for i, name in enumerate(names, 1):
        entry = _run_subprocess(name, targets, timeout)
        results = _merged(results, {name: entry})
        statuses = ", ".join(f"{t}={entry['targets'][t]['status']}" for t in targets)
        print(f"[{i}/{len(names)}] {name}: {statuses} ({entry.get('wall_seconds')} s)", flush=True)
        all_targets = _all_targets(results, targets)
        doc.update(targets=all_targets, results=results, summary=summary(results, all_targets),
                   sweep_seconds=round(previous_seconds + time.perf_counter() - started, 1))
        _write(doc, out)
    return doc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", default="", help="comma-separated names (default: all); --list prints them")
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS))
    parser.add_argument("--out", default="", help="results path without suffix "
                        "(default bench/results/hf-sweep-<date>)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per architecture")
    parser.add_argument("--merge", action="store_true", help="update an existing results file cell by cell")
    parser.add_argument("--combine", default="", help="comma-separated results files to merge into --out "
                        "(runs nothing)")
    parser.add_argument("--note", default="", help="with --combine: a line for the results (how they were run)")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    if args.list:
        for name, arch in ARCHS.items():
            print(f"{name:14s} {arch.family:10s} {arch.auto}")
        return 0
    if args.worker:
        result = run_one(args.worker, targets)
        write_atomically(Path(args.result_file), json.dumps(result, default=str))
        return 0
    out = Path(args.out) if args.out else REPO / "bench" / "results" / f"hf-sweep-{_dt.date.today().isoformat()}"
    if args.combine:
        doc = combine([Path(f) for f in args.combine.split(",") if f], out, args.note)
        print(f"{doc['summary']} -> {out.with_suffix('.json')}")
        return 0
    names = [n for n in args.archs.split(",") if n] or list(ARCHS)
    unknown = [n for n in names if n not in ARCHS]
    if unknown:
        parser.error(f"unknown architectures: {', '.join(unknown)} (--list shows them)")
    doc = sweep(names, targets, out, args.timeout, args.merge)
    s = doc["summary"]
    print(f"{s['pass_every_target']}/{s['architectures']} pass every target; cells {s['cells']}; "
          f"{doc['sweep_seconds']} s -> {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

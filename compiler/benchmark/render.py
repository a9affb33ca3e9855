"""Benchmark results to files: the JSON itself, a Markdown table and a PNG bar chart generated from it."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from crossgraph.compiler.benchmark.harness import FORMAT
from crossgraph.graphs import InputError

MIB = 2**20


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A results file written by `write`; anything else is an InputError naming the file."""
    try:
        results = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read benchmark results {path}: {exc}") from exc
    if not isinstance(results, dict) or results.get("format") != FORMAT:
        raise InputError(f"{path} is not a crossgraph benchmark results file (format {FORMAT})")
    return results


def write(results: dict[str, Any], json_path: str | os.PathLike[str]) -> list[Path]:
    """Write the results as JSON at `json_path`, with the Markdown table (.md) and the chart (.png) beside it."""
    from crossgraph.compiler.artifact import atomic_path, write_atomically

    path = Path(json_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    markdown_path, chart_path = path.with_suffix(".md"), path.with_suffix(".png")
    write_atomically(path, json.dumps(results, indent=1) + "\n")  # each file serialized, then written whole
    write_atomically(markdown_path, markdown(results, chart=chart_path.name))
    with atomic_path(chart_path) as tmp:
        chart(results, tmp)
    return [path, markdown_path, chart_path]


def machine_line(results: dict[str, Any]) -> str:
    m = results["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items())
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    return (f"{m['cpu']}, {m['threads']} of {m['logical_cpus']} CPUs{gpu}; fp32 matmul peak measured at "
            f"{results['matmul_peak_flops'] / 1e9:.1f} GFLOP/s; {libs}")


def markdown(results: dict[str, Any], *, chart: str | None = None) -> str:
    """Per batch size, one row per runtime; then the speedup of each target over each peer."""
    model = results.get("model", {})
    lines = [f"### `crossgraph bench {results['spec']}`", "",
             f"{model.get('name', '?')}, {model.get('parameters', 0):,} parameters; {results['created']}; "
             f"{'quick' if results['settings']['quick'] else 'full'} run.", "", f"Machine: {machine_line(results)}.",
             ""]
    for batch, data in results["batches"].items():
        lines += [f"**Batch {batch}** (inputs {', '.join(data['inputs'])}; {data['flops'] / 1e9:.3g} GFLOP per "
                  f"call by torch's FLOP counter; capture {data['capture_seconds']:.1f} s)", "",
                  "| runtime | kind | first call (s) | median (ms) | p90 (ms) | samples/s | GFLOP/s | % of peak "
                  "| peak RSS, growth (MiB) | file (MiB) | parity |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for name, e in data["runtimes"].items():
            if e["status"] != "ok":
                lines.append(f"| {name} | {e['kind']} | {e['status']}: {e['error']} |||||||||")
                continue
            file_mib = f"{e['file_bytes'] / MIB:.1f}" if e["file_bytes"] is not None else ""
            parity = e["parity"]["status"]
            if e["parity"]["max_abs_err"] is not None:
                parity += f" ({e['parity']['max_abs_err']:.1e})"
            lines.append(f"| {name} | {e['kind']} | {e['first_call']['seconds']:.2f} | "
                         f"{e['latency']['median'] * 1e3:.2f} | {e['latency']['p90'] * 1e3:.2f} | "
                         f"{e['throughput']:.1f} | {e['achieved_flops'] / 1e9:.3g} | "
                         f"{e['fraction_of_peak'] * 100:.0f}% | {e['peak_rss_bytes'] / MIB:.0f}, "
                         f"+{e['rss_growth_bytes'] / MIB:.0f} | {file_mib} | "
                         f"{parity} |")
        lines.append("")
    lines += _speedup_table(results)
    if chart:
        lines += [f"![median latency per runtime]({chart})", ""]
    return "\n".join(lines)


def _speedup_table(results: dict[str, Any]) -> list[str]:
    peers = list(dict.fromkeys(p for data in results["batches"].values() for per in data["speedups"].values()
                               for p in per))
    rows = [(target, batch, per) for batch, data in results["batches"].items()
            for target, per in data["speedups"].items()]
    if not peers or not rows:
        return []
    lines = ["Speedup: the peer's median latency over the target's (above 1: crossgraph's target is faster).", "",
             "| target | batch | " + " | ".join(peers) + " |", "|---|---:|" + "---:|" * len(peers)]
    for target, batch, per in rows:
        lines.append(f"| {target} | {batch} | " + " | ".join(f"{per[p]:.2f}x" if p in per else "" for p in peers)
                     + " |")
    return lines + [""]


def chart(results: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Median latency per runtime (p90 as the whisker), one panel per batch size; targets and peers coloured
    apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = list(results["batches"].items())
    fig, axes = plt.subplots(1, len(batches), figsize=(6.5 * len(batches), 4.2), squeeze=False)
    for ax, (batch, data) in zip(axes[0], batches):
        timed = [(n, e) for n, e in data["runtimes"].items() if e["status"] == "ok"]
        names = [n for n, _ in timed]
        medians = [e["latency"]["median"] * 1e3 for _, e in timed]
        whiskers = [max(0.0, e["latency"]["p90"] * 1e3 - m) for (_, e), m in zip(timed, medians)]
        colors = ["tab:blue" if e["kind"] == "target" else "tab:gray" for _, e in timed]
        ax.barh(names, medians, xerr=[[0] * len(medians), whiskers], color=colors, capsize=3)
        for y, (value, whisker) in enumerate(zip(medians, whiskers)):
            label = f"{value:.3g}" if value < 100 else f"{value:,.0f}"
            ax.text(value + whisker, y, f"  {label}", va="center", fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("median latency, ms (whisker: p90)")
        ax.set_title(f"batch {batch}")
        ax.margins(x=0.2)
    m = results["machine"]
    fig.suptitle(f"{results['spec']}: crossgraph targets (blue) and peers (grey); {m['cpu']}, "
                 f"{m['threads']} threads", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")  # the path may be a temporary name without .png
    plt.close(fig)

"""export(): lower one Graph to several targets and write each runtime's file plus manifest.json.

Each model file takes exactly the model's inputs, in the factory's order, with the weights embedded, so it runs
with its runtime's own loader. The export is all or nothing: it is built in a temporary sibling directory and
renamed into place at the end (an interrupted or failed export leaves no partial directory). Beside the model
files lies the reference sample, reference.npz (np.savez, no pickle): the example inputs (in_0, ...), the eager
graph's outputs on them (out_0, ...) and, where it runs, their float64 oracle (oracle_0, ...), which
`crossgraph verify` runs every file on.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from crossgraph.compiler.artifact import EXPORT_FORMAT, MANIFEST, atomic_directory, atomic_path, sha256
from crossgraph.compiler.lower import LOWERINGS, lower
from crossgraph.compiler.pipeline import Passes, Pipelines, passes_for
from crossgraph.graphs import Graph, InputError

FORMAT = EXPORT_FORMAT
SAMPLE = "reference.npz"
_PACKAGES = ("crossgraph", "torch", "jax", "jaxlib", "flax", "onnx", "onnxscript", "onnxruntime", "torch_tensorrt")


def versions() -> dict[str, str | None]:
    """Installed versions of the packages an artifact depends on (None when absent)."""
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            found[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def describe_io(graph: Graph) -> dict[str, list[dict[str, Any]]]:
    """Names, dtypes and shapes (symbolic dims as their names) of the graph's inputs and outputs."""
    def spec(name: str, val: Any) -> dict[str, Any]:
        shape = [s if isinstance(s, int) else str(s) for s in getattr(val, "shape", ())]
        return {"name": name, "dtype": str(getattr(val, "dtype", "")).removeprefix("torch."), "shape": shape}

    outputs = graph.fx.output_node().args[0]
    return {"inputs": [spec(n, node.meta.get("val")) for n, node in zip(graph.input_names, graph.input_nodes())],
            "outputs": [spec(n, node.meta.get("val")) for n, node in zip(graph.output_names, outputs)]}


def export(graph: Graph, targets: Sequence[str], out: str | Path, *, spec: str = "",
           passes: Passes = None, sample: Sequence[torch.Tensor] | None = None,
           force: bool = False) -> dict[str, Any]:
    """Run each target's passes (its default pipeline unless `passes` says otherwise), write one file per
    target, the reference sample (when `sample`, the graph's flat inputs, is given) and manifest.json into
    `out`; returns the manifest.

    All or nothing: InputError for unknown targets or passes, or a non-empty `out` without `force`, before
    anything is written; a target that fails, an OSError (a full disk: InputError naming `out`) or an interrupt
    leaves `out` as it was. `force` replaces a non-empty `out` whole.
    """
    unknown = [t for t in targets if t not in LOWERINGS]
    if unknown or not targets:
        raise InputError(f"cannot export to {unknown or 'no targets'}; targets: {', '.join(LOWERINGS)}")
    pass_lists = {t: passes_for(t, passes) for t in targets}
    pipelines = Pipelines(graph)
    out = Path(out)
    manifest: dict[str, Any] = {
        "format": FORMAT, "spec": spec, "model": graph.name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **describe_io(graph), "dynamic_dims": graph.dynamic_dims(), "parameters": graph.num_parameters(),
        "versions": versions(), "artifacts": {},
    }
    try:
        with atomic_directory(out, force=force) as tmp:
            for target in dict.fromkeys(targets):
                artifact = lower(pipelines.run(pass_lists[target])[0], target)
                path = artifact.save(tmp)
                manifest["artifacts"][target] = {"target": target, "file": path.name,
                                                 "bytes": path.stat().st_size, "sha256": sha256(path),
                                                 "passes": list(pass_lists[target]), **artifact.manifest()}
            if sample is not None:
                manifest["reference_sample"] = write_sample(graph, sample, tmp / SAMPLE)
            text = json.dumps(manifest, indent=2, default=str) + "\n"
            with atomic_path(tmp / MANIFEST) as path:
                path.write_text(text)
    except OSError as exc:  # a full disk, a file-size limit, a directory made read-only meanwhile
        raise InputError(f"cannot write the export to {out}: {exc.strerror or exc}; nothing was written") from exc
    return manifest


def write_sample(graph: Graph, inputs: Sequence[torch.Tensor], path: Path) -> dict[str, Any]:
    """Write the reference sample (inputs, eager outputs, float64 oracle where it runs) to `path` with np.savez;
    returns its manifest entry: file, size, sha256, dtypes (bfloat16 is stored widened to float32) and the op
    behind each output (for the op-family tolerances)."""
    from crossgraph.compiler.judge import output_ops

    inputs = [t.detach().cpu() for t in inputs]
    outputs = [torch.as_tensor(t).detach().cpu() for t in graph(*inputs)]
    arrays = {f"in_{i}": _storable(t) for i, t in enumerate(inputs)}
    arrays |= {f"out_{i}": _storable(t) for i, t in enumerate(outputs)}
    oracle = "none"
    if any(t.dtype == torch.float32 for t in outputs):
        try:
            from crossgraph.compiler.oracle import graph_outputs
            wide = graph_outputs(graph, inputs)
        except Exception:  # no float64 run of this graph: the tolerance policy alone judges
            wide = []
        if len(wide) == len(outputs):
            for i, (o, w) in enumerate(zip(outputs, wide)):
                if o.dtype == torch.float32 and isinstance(w, torch.Tensor) and w.dtype == torch.float64:
                    arrays[f"oracle_{i}"] = w.detach().cpu().numpy()
                    oracle = "graph"
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    ops = output_ops(graph)
    return {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256(path),
            "inputs": [_dtype(t) for t in inputs], "outputs": [_dtype(t) for t in outputs],
            "output_ops": [None if op is None else str(op) for op in ops] if len(ops) == len(outputs) else None,
            "oracle": oracle}


def _storable(t: torch.Tensor) -> np.ndarray:
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def auto_dynamic_shapes(inputs: Sequence[torch.Tensor], names: Sequence[str] | None = None,
                        max_sizes: dict[str, dict[int, int]] | None = None) -> tuple[dict[int, Any], ...]:
    """`--dynamic`: every dimension of every input may vary; torch.export keeps static what the model fixes, and
    capture bounds what the model bounds (position tables: graphs/bounds.py). `max_sizes` (`--max NAME.DIM=N`,
    by the input `names`) caps dimensions further; a name or dim that is not there, or an example already past
    its cap, is an InputError."""
    max_sizes = max_sizes or {}
    names = list(names) if names is not None else [f"input_{i}" for i in range(len(inputs))]
    unknown = sorted(set(max_sizes) - set(names))
    if unknown:
        raise InputError(f"--max names input {unknown[0]!r}; the inputs are {', '.join(names)}")
    shapes = []
    for name, t in zip(names, inputs):
        caps = max_sizes.get(name, {})
        for dim, cap in caps.items():
            if dim >= t.dim():
                raise InputError(f"--max {name}.{dim}: input {name!r} has {t.dim()} dimension(s)")
            if t.shape[dim] > cap:
                raise InputError(f"--max {name}.{dim}={cap}: the example input {name!r} has size {t.shape[dim]} "
                                 f"there; give an example within the cap")
        shapes.append({i: torch.export.Dim.AUTO(max=caps[i]) if i in caps else torch.export.Dim.AUTO
                       for i in range(t.dim())})
    return tuple(shapes)

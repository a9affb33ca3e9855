"""export(): lower one Graph to several targets and write each runtime's file plus manifest.json.

Each model file takes exactly the model's inputs, in the factory's order, with the weights embedded, so it runs
with its runtime's own loader. Every file is written atomically (temporary name, then rename).
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import platform
from pathlib import Path
from typing import Any, Sequence

import torch

from crossgraph.compiler.artifact import atomic_path
from crossgraph.compiler.lower import LOWERINGS, lower
from crossgraph.compiler.pipeline import Passes, Pipelines, passes_for
from crossgraph.graphs import Graph, InputError

FORMAT = "crossgraph.export/1"
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
           passes: Passes = None) -> dict[str, Any]:
    """Run each target's passes (its default pipeline unless `passes` says otherwise), write one file per
    target and manifest.json into `out`; returns the manifest.

    Raises InputError for unknown targets or passes before writing anything; a target that fails in its passes
    or its lowering raises after the files of the targets before it (and their manifest) are in place.
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
        for target in dict.fromkeys(targets):
            artifact = lower(pipelines.run(pass_lists[target])[0], target)
            path = artifact.save(out)
            manifest["artifacts"][target] = {"target": target, "file": path.name, "bytes": path.stat().st_size,
                                             "sha256": sha256(path), "passes": list(pass_lists[target]),
                                             **artifact.manifest()}
    finally:
        if manifest["artifacts"]:
            with atomic_path(out / "manifest.json") as tmp:
                tmp.write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    return manifest


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def auto_dynamic_shapes(inputs: Sequence[torch.Tensor]) -> tuple[dict[int, Any], ...]:
    """`--dynamic`: every dimension of every input may vary; torch.export keeps static what the model fixes."""
    return tuple({i: torch.export.Dim.AUTO for i in range(t.dim())} for t in inputs)

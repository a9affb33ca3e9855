"""lower(graph, target) -> Artifact. Target modules are imported on first use (jax, onnx and TensorRT are heavy)."""

from __future__ import annotations

import importlib
from typing import Any

from crossgraph.compiler.artifact import Artifact
from crossgraph.graphs import Graph, InputError

LOWERINGS: dict[str, str] = {
    "inductor": "crossgraph.compiler.inductor",
    "onnx": "crossgraph.compiler.onnx_rt",
    "jax": "crossgraph.compiler.jaxlower",
    "tensorrt": "crossgraph.compiler.tensorrt",
}
"""Each module defines `lower(graph, **options) -> Artifact` and `unavailable() -> str | None` (why it cannot run
on this machine, e.g. a missing optional package or no CUDA device)."""


def _module(target: str) -> Any:
    if target not in LOWERINGS:
        raise InputError(f"unknown lowering target '{target}'; known: {', '.join(LOWERINGS)}")
    return importlib.import_module(LOWERINGS[target])


def unavailable(target: str) -> str | None:
    """Why `target` cannot run here, or None."""
    return _module(target).unavailable()


def lower(graph: Graph, target: str, **options: Any) -> Artifact:
    """Lower `graph` to `target`. An op the target cannot translate raises UnsupportedOpError."""
    module = _module(target)
    reason = module.unavailable()
    if reason:
        raise InputError(f"target '{target}' is not available here: {reason}")
    return module.lower(graph, **options)

"""The `jax` target: crossgraph's own lowering of core-ATen Graphs to JAX.

One op table (`registry`) filled by family modules (see `registry.FAMILIES`); an interpreter that turns a Graph
into a pure `fn(params, *inputs)`; an Artifact that runs it under jax.jit and saves it as a `jax.export` module;
`ShardedJax` (in `sharding`) runs a Graph carrying Sharding annotations over a device mesh.
Width policy: `jax_enable_x64` stays off, int64 is computed as int32 and float64 is refused (see `dtypes`).
jax is imported on first use, so `unavailable()` can report its absence.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from crossgraph.graphs import Graph, InputError

if TYPE_CHECKING:
    from crossgraph.compiler.jaxlower.artifact import JaxArtifact

_PUBLIC = {"JaxArtifact": "artifact", "LoadedJax": "artifact", "load": "artifact", "Coverage": "core_aten",
           "coverage": "core_aten", "NeedsX64Error": "dtypes", "JaxFunction": "interpreter",
           "to_jax_function": "interpreter", "ShardedJax": "sharding", "count_collectives": "sharding",
           "ensure_devices": "sharding", "jax_mesh": "sharding", "named_sharding": "sharding"}

__all__ = ["lower", "unavailable", *_PUBLIC]


def unavailable() -> str | None:
    """Why the jax target cannot run here (jax missing), or None."""
    try:
        importlib.import_module("jax")
    except ImportError as exc:
        return f"jax is not installed ({exc})"
    return None


def lower(graph: Graph, **options: Any) -> "JaxArtifact":
    """Lower `graph` to a JaxArtifact. Option: `platforms` (e.g. ["cpu", "cuda"]) the saved module targets,
    by default the current one. An op without a translation raises UnsupportedOpError before anything runs."""
    unknown = sorted(set(options) - {"platforms"})
    if unknown:
        raise InputError(f"unknown jax lowering option(s) {', '.join(unknown)}; known: platforms")
    from crossgraph.compiler.jaxlower.artifact import JaxArtifact
    from crossgraph.compiler.jaxlower.interpreter import to_jax_function
    return JaxArtifact(graph, to_jax_function(graph), options.get("platforms"))


def __getattr__(name: str) -> Any:
    """The public helpers, imported from their modules on first use."""
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)

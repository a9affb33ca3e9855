"""JaxArtifact: a Graph lowered to JAX and run under jax.jit; saved as a serialized `jax.export` module (StableHLO
with the weights embedded and the graph's dynamic dimensions as symbolic shapes), which `load` reads back."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
import torch
from jax import export

from crossgraph.compiler.artifact import Artifact
from crossgraph.compiler.jaxlower.interpreter import JaxFunction
from crossgraph.compiler.jaxlower.polymorphism import input_specs
from crossgraph.graphs import Graph, InputError
from crossgraph.models.convert import tensor_to_jax


def _as_jax(value: Any) -> jax.Array:
    """A torch tensor, numpy array or jax array as a jax array under the width policy (int64 becomes int32)."""
    if isinstance(value, jax.Array):
        return value
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise InputError(f"inputs must be tensors or arrays, got {type(value).__name__}")
    return tensor_to_jax(value)


def _declared(array: jax.Array, dtype: torch.dtype | None) -> np.ndarray:
    """An output as numpy, widened back to int64 where the graph declares int64 (JAX computed it in int32)."""
    out = np.asarray(array)
    if dtype == torch.int64 and out.dtype == np.int32:
        return out.astype(np.int64)
    return out


class JaxArtifact(Artifact):
    """A Graph as a jitted JAX function; the weights are passed to it as a pytree, so they are not constants."""

    target = "jax"
    filename = "model.jax.bin"

    def __init__(self, graph: Graph, function: JaxFunction, platforms: Sequence[str] | None = None) -> None:
        super().__init__(graph)
        self.function = function
        self.platforms = tuple(platforms) if platforms else None
        self._jitted = jax.jit(function.fn)
        self._exported: export.Exported | None = None

    def run(self, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
        outputs = self._jitted(self.function.params, *(_as_jax(t) for t in inputs))
        return [_declared(o, d) for o, d in zip(outputs, self.function.output_dtypes)]

    def exported(self) -> export.Exported:
        """The jax.export module of the graph's inputs -> outputs (weights embedded), built once."""
        if self._exported is None:
            params, fn = self.function.params, self.function.fn
            closed = jax.jit(lambda *inputs: fn(params, *inputs))
            self._exported = export.export(closed, platforms=self.platforms)(*input_specs(self.graph))
        return self._exported

    def write(self, path: Path) -> None:
        Path(path).write_bytes(self.exported().serialize())

    def manifest(self) -> dict[str, Any]:
        exported = self.exported()
        return {"jax_version": jax.__version__, "platforms": list(exported.platforms),
                "calling_convention_version": exported.calling_convention_version,
                "input_shapes": [f"{a.dtype}[{', '.join(map(str, a.shape))}]" for a in exported.in_avals]}


class LoadedJax:
    """A deserialized jax.export module, callable on torch tensors, numpy or jax arrays; returns numpy arrays."""

    def __init__(self, exported: export.Exported) -> None:
        self.exported = exported

    def __call__(self, *inputs: Any) -> list[np.ndarray]:
        outputs = self.exported.call(*(_as_jax(x) for x in inputs))
        return [np.asarray(o) for o in jax.tree_util.tree_leaves(outputs)]


def load(path: str | os.PathLike[str]) -> LoadedJax:
    """Read a file written by JaxArtifact.save; anything else is an InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no jax artifact at {path}")
    try:
        exported = export.deserialize(bytearray(path.read_bytes()))
    except Exception as exc:  # flatbuffers and jax raise many kinds here; all mean "not a jax.export module"
        raise InputError(f"{path} is not a serialized jax.export module ({type(exc).__name__}: {exc})") from exc
    return LoadedJax(exported)

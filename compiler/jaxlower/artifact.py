"""JaxArtifact: a Graph lowered to JAX and run under jax.jit; saved as a serialized `jax.export` module (StableHLO
with the weights embedded and the graph's dynamic dimensions as symbolic shapes), which `load` reads back.

Inputs are checked before every call (`InputChecks`), because nothing inside an XLA program can fail: shapes
against the graph's ranges (the jitted function would retrace for any shape, and a saved module's own symbolic
constraints, which it does enforce, name no input), and the values of inputs that index a table (token ids): an
XLA gather clamps or fills out-of-range indices (NaN rows) where torch raises. The check runs on the host, on the
concrete arrays, outside the jitted function, so it costs one min/max per index input and works however the
function is compiled; `checkify` would need an error output in the compiled function, which a `jax.export`
module cannot carry. A loaded module finds the checks in its export's manifest.json (without one, only the
module's shape constraints apply).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np
import torch
from jax import export

from crossgraph.compiler.artifact import Artifact, check_manifest_hash
from crossgraph.compiler.jaxlower.interpreter import JaxFunction
from crossgraph.compiler.jaxlower.polymorphism import input_specs
from crossgraph.graphs import Graph, InputError, bounds
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


def _named_arrays(inputs: Sequence[Any], names: Sequence[str]) -> list[jax.Array]:
    """`_as_jax` of each input; its InputError (int64 values outside int32, float64) names the input."""
    arrays = []
    for i, x in enumerate(inputs):
        try:
            arrays.append(_as_jax(x))
        except InputError as exc:
            name = f"'{names[i]}'" if i < len(names) else str(i)
            raise InputError(f"input {name}: {exc}") from exc
    return arrays


def _declared(array: jax.Array, dtype: torch.dtype | None) -> np.ndarray:
    """An output as numpy, widened back to int64 where the graph declares int64 (JAX computed it in int32)."""
    out = np.asarray(array)
    if dtype == torch.int64 and out.dtype == np.int32:
        return out.astype(np.int64)
    return out


@dataclasses.dataclass(frozen=True)
class InputChecks:
    """The checks before a call (see the module docstring): the graph's input signature and, per input that
    indexes a table, the valid index range [low, rows)."""

    signature: bounds.Signature
    indices: dict[str, dict[str, Any]]

    @classmethod
    def of(cls, graph: Graph) -> InputChecks:
        uses = bounds.input_index_bounds(graph)
        return cls(bounds.Signature.of(graph), {name: {"low": use.low, "rows": use.rows, "table": use.table}
                                                for name, use in uses.items()})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InputChecks:
        return cls(bounds.Signature(data["signature"]), dict(data.get("indices", {})))

    def to_json(self) -> dict[str, Any]:
        return {"signature": self.signature.data, "indices": self.indices}

    def __call__(self, inputs: Sequence[Any], what: str = "the jax artifact") -> None:
        """InputError for a shape outside the graph's ranges or an index outside its table."""
        self.shapes(inputs, what)
        self.indices_within(inputs)

    def shapes(self, inputs: Sequence[Any], what: str = "the jax artifact") -> None:
        """InputError for a count, rank or size the graph cannot take (a dynamic size past its bound included)."""
        self.signature.check(inputs, what, dtypes=False)

    def indices_within(self, inputs: Sequence[Any]) -> None:
        """InputError for an input that indexes a table holding an index outside it."""
        for spec, x in zip(self.signature.inputs, inputs):
            use = self.indices.get(spec.name)
            if use is None or isinstance(x, jax.core.Tracer) or not np.prod(x.shape):
                continue
            low, high = (int(v) for v in ((x.min(), x.max()) if isinstance(x, torch.Tensor)
                                          else (np.min(x), np.max(x))))
            if low < use["low"] or high >= use["rows"]:
                bad = low if low < use["low"] else high
                raise InputError(f"input '{spec.name}' holds the index {bad}, outside [{use['low']}, "
                                 f"{use['rows']}): it indexes the {use['rows']} rows of {use['table']} (JAX would "
                                 "clamp the lookup or fill it with NaN instead of failing)")


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
        self.checks = InputChecks.of(graph)

    def check_inputs(self, inputs: Sequence[Any]) -> None:
        """InputError for inputs this artifact cannot take: shapes past the graph's ranges, indices outside their
        table, int64 values outside int32, float64."""
        self.checks.shapes(inputs)
        self._arrays(inputs)
        self.checks.indices_within(inputs)

    def _arrays(self, inputs: Sequence[Any]) -> list[jax.Array]:
        """The inputs as jax arrays under the width policy; a refused one is an InputError naming the input."""
        return _named_arrays(inputs, [spec.name for spec in self.checks.signature.inputs])

    def run(self, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
        self.checks.shapes(inputs)
        arrays = self._arrays(inputs)  # widths first: int64 outside int32 is refused as that
        self.checks.indices_within(inputs)
        outputs = self._jitted(self.function.params, *arrays)
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
                "input_shapes": [f"{a.dtype}[{', '.join(map(str, a.shape))}]" for a in exported.in_avals],
                "input_checks": self.checks.to_json()}


class LoadedJax:
    """A deserialized jax.export module, callable on torch tensors, numpy or jax arrays; returns numpy arrays."""

    def __init__(self, exported: export.Exported, checks: InputChecks | None = None) -> None:
        self.exported = exported
        self.checks = checks

    def __call__(self, *inputs: Any) -> list[np.ndarray]:
        if self.checks is not None:
            self.checks.shapes(inputs)
        arrays = _named_arrays(inputs, [s.name for s in self.checks.signature.inputs] if self.checks else [])
        if self.checks is not None:
            self.checks.indices_within(inputs)
        try:
            outputs = self.exported.call(*arrays)
        except ValueError as exc:  # the module's own symbolic-shape constraints (s41 <= 64) refuse the shapes
            refusal = _shape_refusal(exc)
            if refusal is None:
                raise
            raise InputError(refusal) from exc
        return [np.asarray(o) for o in jax.tree_util.tree_leaves(outputs)]


def load(path: str | os.PathLike[str]) -> LoadedJax:
    """Read a file written by JaxArtifact.save; anything else is an InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no jax artifact at {path}")
    check_manifest_hash(path)  # inside an export: the file its manifest.json describes, or an InputError
    try:
        exported = export.deserialize(bytearray(path.read_bytes()))
    except Exception as exc:  # flatbuffers and jax raise many kinds here; all mean "not a jax.export module"
        raise InputError(f"{path} is not a serialized jax.export module ({type(exc).__name__}: {exc})") from exc
    return LoadedJax(exported, _manifest_checks(path))


_CONSTRAINT = re.compile(r"symbolic shape constraint (?P<constraint>.+?)\. Expected")
_BINDING = re.compile(r"'(?P<symbol>\w+)' = (?P<value>\d+) from specification '[^']*' for dimension "
                      r"args\[(?P<arg>\d+)\]\.shape\[(?P<dim>\d+)\]")


def _shape_refusal(exc: BaseException) -> str | None:
    """A jax.export module's shape-assertion failure (in `exc` or its cause) in one line: the input, the dim, its
    size and the constraint; None for any other error."""
    text = " ".join(str(e) for e in (exc, exc.__cause__) if e is not None)
    found = _CONSTRAINT.search(text)
    if found is None:
        return None
    constraint = found["constraint"]
    for bind in _BINDING.finditer(text):
        if re.search(rf"\b{bind['symbol']}\b", constraint):
            return (f"input {bind['arg']} dim {bind['dim']} is {bind['value']}: the jax module takes only "
                    f"{constraint} ({bind['symbol']} is that dim)")
    return f"the jax module refuses these input shapes: {constraint} does not hold"


def _manifest_checks(path: Path) -> InputChecks | None:
    """The input checks recorded for this file in the manifest.json of its export, if there is one."""
    try:
        manifest = json.loads((path.parent / "manifest.json").read_text(encoding="utf-8"))
        entry = next(e for e in manifest["artifacts"].values() if e.get("file") == path.name)
        return InputChecks.from_json(entry["input_checks"])
    except Exception:  # no manifest, or one from before the checks were recorded: the module's constraints only
        return None

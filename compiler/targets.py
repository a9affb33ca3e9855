"""The targets a Graph can be checked on, by name, in the order reports list them."""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
import torch

from crossgraph.compiler import eager, flax_reference
from crossgraph.compiler.subject import Subject
from crossgraph.graphs import InputError

Runner = Callable[[Subject, Sequence[torch.Tensor]], list[np.ndarray]]


@dataclasses.dataclass(frozen=True)
class Target:
    """A runtime: `run` executes the subject there; `unavailable` says why it cannot (None when it can)."""

    name: str
    description: str
    run: Runner | None
    unavailable: Callable[[Subject], str | None] = lambda subject: None


TARGETS: dict[str, Target] = {
    "eager": Target("eager", "the captured graph run by PyTorch", eager.run),
    "inductor": Target("inductor", "TorchInductor (torch.compile / AOTInductor)", None),
    "onnx": Target("onnx", "ONNX via torch.onnx dynamo export, run by ONNX Runtime", None),
    "jax": Target("jax", "crossgraph's ATen-to-JAX lowering under jax.jit", None),
    "tensorrt": Target("tensorrt", "Torch-TensorRT (needs CUDA)", None),
    "flax": Target("flax", "the model's independent Flax NNX reference", flax_reference.run,
                   flax_reference.unavailable),
}
"""Every name the CLI contract accepts. A target whose lowering is not built yet has run=None and reports
skipped with that reason, so scripts that name it keep working."""


def resolve(names: Sequence[str] | str | None) -> list[Target]:
    """Targets from names (a list or a comma-separated string); None means all of them. Unknown names raise."""
    if names is None:
        return list(TARGETS.values())
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        raise InputError(f"unknown target(s) {', '.join(unknown)}; known targets: {', '.join(TARGETS)}")
    if not names:
        raise InputError("no targets given")
    return [TARGETS[n] for n in dict.fromkeys(names)]

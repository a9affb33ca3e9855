"""The targets a Graph can be checked on, by name, in the order reports list them."""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Callable, Sequence

import numpy as np
import torch

from crossgraph.compiler import eager, flax_reference
from crossgraph.compiler.lower import lower
from crossgraph.compiler.lower import unavailable as lowering_unavailable
from crossgraph.compiler.subject import Subject
from crossgraph.graphs import InputError

Runner = Callable[[Sequence[torch.Tensor]], list[np.ndarray]]
"""Runs a prepared subject on one set of inputs: one numpy array per output."""


@dataclasses.dataclass(frozen=True)
class Target:
    """A runtime: `prepare` builds the subject there once (lowering, compiling) and returns what runs it on any
    inputs; `unavailable` says why it cannot run (None when it can)."""

    name: str
    description: str
    prepare: Callable[[Subject], Runner]
    unavailable: Callable[[Subject], str | None] = lambda subject: None
    lowered: bool = False
    """Whether the target lowers the graph itself (so its passes, nodes and lowering can be debugged)."""

    def run(self, subject: Subject, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
        """Prepare and run once."""
        return self.prepare(subject)(inputs)


def _lowered(name: str, description: str) -> Target:
    """A target that lowers the captured graph with `lower(graph, name)` and runs the artifact."""
    def prepare(subject: Subject) -> Runner:
        artifact = lower(subject.graph, name)
        check = getattr(artifact, "check_inputs", None)
        if check is not None:  # inputs the runtime refuses (jax: int64 outside int32) are bad input: exit 2
            check(subject.example_inputs)
        return lambda inputs: artifact(*inputs)

    return Target(name, description, prepare, lambda subject: lowering_unavailable(name), lowered=True)


TARGETS: dict[str, Target] = {
    "eager": Target("eager", "the captured graph run by PyTorch", lambda subject: partial(eager.run, subject)),
    "inductor": _lowered("inductor", "TorchInductor, compiled ahead of time (AOTInductor)"),
    "onnx": _lowered("onnx", "ONNX via torch.onnx dynamo export, run by ONNX Runtime"),
    "jax": _lowered("jax", "crossgraph's ATen-to-JAX lowering under jax.jit"),
    "tensorrt": _lowered("tensorrt", "Torch-TensorRT (needs CUDA)"),
    "flax": Target("flax", "the model's independent Flax NNX reference", flax_reference.prepare,
                   flax_reference.unavailable),
}
"""Every name the CLI contract accepts, in the order reports list them."""


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

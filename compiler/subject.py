"""What a parity check is about: the model as the user wrote it, its captured Graph and its inputs."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import ml_dtypes
import numpy as np
import torch
import torch.utils._pytree as pytree

from crossgraph.graphs import Graph


@dataclasses.dataclass
class Subject:
    model: Any
    graph: Graph
    example_inputs: tuple[torch.Tensor, ...]
    _oracle: Any = dataclasses.field(default=None, repr=False, compare=False)

    def reference(self, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
        """The model run eagerly as written (before capture), called as its user calls it (keyword inputs by
        name, see Graph.call): what every target is compared with."""
        with torch.no_grad():
            out = self.graph.call(self.model, inputs)
        return [to_numpy(t) for t in pytree.tree_leaves(out)]

    def oracle(self, inputs: Sequence[torch.Tensor], reference: Sequence[np.ndarray]) -> Any:
        """The model (or its captured graph) run in float64 on `inputs` (compiler.oracle.Oracle), for the
        leaves of `reference` that are float32; the float64 copy of the model is made once."""
        from crossgraph.compiler.oracle import ModelOracle
        if self._oracle is None:
            self._oracle = ModelOracle(self.model, self.graph)
        return self._oracle(inputs, reference)


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor as numpy for comparison; bfloat16 becomes ml_dtypes.bfloat16 so its tolerance applies."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.float().numpy().astype(ml_dtypes.bfloat16)
    return t.numpy()

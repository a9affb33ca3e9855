"""What a parity check is about: the model as the user wrote it, its captured Graph and its inputs."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import ml_dtypes
import numpy as np
import torch
import torch.utils._pytree as pytree

from crossgraph.graphs import FunctionalModel, Graph


@dataclasses.dataclass
class Subject:
    model: Any
    graph: Graph
    example_inputs: tuple[torch.Tensor, ...]

    def reference(self, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
        """The model run eagerly as written (before capture): what every target is compared with."""
        with torch.no_grad():
            if isinstance(self.model, FunctionalModel):
                out = self.model(*inputs)
            else:
                out = self.model(*inputs, **self.graph.constant_kwargs)
        return [to_numpy(t) for t in pytree.tree_leaves(out)]


def to_numpy(t: torch.Tensor) -> np.ndarray:
    """A tensor as numpy for comparison; bfloat16 becomes ml_dtypes.bfloat16 so its tolerance applies."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return t.float().numpy().astype(ml_dtypes.bfloat16)
    return t.numpy()

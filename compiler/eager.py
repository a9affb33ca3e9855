"""The `eager` target: the captured graph run by PyTorch (`ExportedProgram.module()`), no compiler."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from crossgraph.compiler.subject import Subject, to_numpy


def run(subject: Subject, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
    return [to_numpy(t) for t in subject.graph(*inputs)]

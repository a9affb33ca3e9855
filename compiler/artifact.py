"""Artifact: a Graph lowered to one runtime. Callable on torch tensors or numpy arrays (returns numpy arrays in
the graph's output order); `save(dir)` writes the runtime's own file atomically."""

from __future__ import annotations

import abc
import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np
import torch

from crossgraph.graphs import Graph


class Artifact(abc.ABC):
    """Subclasses set `target` and `filename`, and implement `run` and `write`."""

    target: ClassVar[str]
    filename: ClassVar[str]

    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    def __call__(self, *inputs: torch.Tensor | np.ndarray) -> list[np.ndarray]:
        return self.run([as_tensor(x) for x in inputs])

    @abc.abstractmethod
    def run(self, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
        """Execute on the runtime; one numpy array per graph output, in order."""

    @abc.abstractmethod
    def write(self, path: Path) -> None:
        """Write the runtime's file to `path` (a temporary name; `save` moves it into place)."""

    def manifest(self) -> dict[str, Any]:
        """Target-specific manifest fields (opset, providers, ...); the exporter adds the common ones."""
        return {}

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write `directory/filename` atomically: a failed write leaves no partial file behind."""
        final = Path(directory) / self.filename
        with atomic_path(final) as tmp:
            self.write(tmp)
        return final


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A temporary path beside `final`, renamed onto it when the block succeeds and removed when it fails."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # mkstemp makes the file owner-only; a saved model is an ordinary file
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """An artifact input as a torch tensor (numpy arrays are wrapped without copying when contiguous)."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"artifact inputs must be torch tensors or numpy arrays, got {type(x).__name__}")

"""The `tensorrt` target: Torch-TensorRT's dynamo path on a CUDA device; an optional extra.

Absent `torch_tensorrt` or a CUDA device, `unavailable()` says which, and parity reports `skipped`.
Dynamic dimensions become TensorRT optimization profiles (min, opt = the captured size, max).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from crossgraph.compiler.artifact import Artifact
from crossgraph.compiler.dialect_decompositions import decompose
from crossgraph.compiler.subject import to_numpy
from crossgraph.graphs import Graph

MAX_DYNAMIC = 4096
"""Upper bound of a TensorRT profile when the graph leaves a dimension unbounded."""


def unavailable() -> str | None:
    if importlib.util.find_spec("torch_tensorrt") is None:
        return "torch_tensorrt is not installed (pip install 'crossgraph[tensorrt]' on a CUDA machine)"
    if not torch.cuda.is_available():
        return "no CUDA device"
    return None


Profile = tuple[list[int], list[int], list[int], torch.dtype]


def profiles(graph: Graph) -> list[Profile]:
    """(min, opt, max shape, dtype) per user input: static dims fixed, dynamic ones from the graph's ranges with
    the captured size as the optimum. Pure, so it is tested without a GPU."""
    ranges = graph.exported.range_constraints
    out = []
    for node in graph.input_nodes():
        val = node.meta["val"]
        lo, opt, hi = [], [], []
        for size in val.shape:
            if isinstance(size, torch.SymInt):
                vr = ranges.get(size.node.expr)
                low = max(1, int(vr.lower)) if vr is not None else 1  # TensorRT profiles start at 1
                high = int(vr.upper) if vr is not None and vr.upper < MAX_DYNAMIC else MAX_DYNAMIC
                hint = size.node.hint
                lo.append(low)
                hi.append(high)
                opt.append(int(hint) if hint is not None else low)
            else:
                lo.append(int(size))
                opt.append(int(size))
                hi.append(int(size))
        out.append((lo, opt, hi, val.dtype))
    return out


def input_specs(graph: Graph) -> list[Any]:
    """torch_tensorrt.Input per user input, from `profiles`."""
    import torch_tensorrt

    return [torch_tensorrt.Input(min_shape=lo, opt_shape=opt, max_shape=hi, dtype=dtype)
            for lo, opt, hi, dtype in profiles(graph)]


class TensorRTArtifact(Artifact):
    target = "tensorrt"
    filename = "model.trt.ep"

    def __init__(self, graph: Graph, module: torch.nn.Module, specs: list[Any]) -> None:
        super().__init__(graph)
        self.module = module
        self.specs = specs

    def run(self, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
        with torch.no_grad():
            out = self.module(*(t.cuda() for t in inputs))
        return [to_numpy(t) for t in torch.utils._pytree.tree_leaves(out)]

    def write(self, path: Path) -> None:
        import torch_tensorrt

        torch_tensorrt.save(self.module, str(path), output_format="exported_program", arg_inputs=self.specs)

    def manifest(self) -> dict[str, Any]:
        import torch_tensorrt

        return {"torch_tensorrt_version": torch_tensorrt.__version__, "device": torch.cuda.get_device_name()}


def lower(graph: Graph, **options: Any) -> TensorRTArtifact:
    """Compile the graph's ExportedProgram, dialect ops decomposed (`decompose`) and moved to CUDA, with
    torch_tensorrt.dynamo.compile."""
    import torch_tensorrt
    from torch.export.passes import move_to_device_pass

    program = move_to_device_pass(decompose(graph, "tensorrt").exported, "cuda")
    specs = input_specs(graph)
    module = torch_tensorrt.dynamo.compile(program, arg_inputs=specs, **options)
    return TensorRTArtifact(graph, module, specs)

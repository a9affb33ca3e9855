"""Shared test helpers: perturbed parameters and the torch-vs-Flax comparison every model test uses."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Sequence

import numpy as np
import torch

from crossgraph.compiler import Comparison, TolerancePolicy, compare_outputs
from crossgraph.compiler import flax_reference
from crossgraph.compiler.subject import to_numpy
from crossgraph.graphs import FunctionalModel, map_tree
from crossgraph.models.convert import tensor_to_jax


def jitter(params: dict, seed: int, scale: float = 0.05) -> dict:
    """Add noise to every float leaf, so that ones/zeros initializations cannot hide a swapped mapping."""
    g = torch.Generator().manual_seed(seed)

    def bump(t: torch.Tensor) -> torch.Tensor:
        return t + scale * torch.randn(t.shape, generator=g) if t.is_floating_point() else t

    return map_tree(bump, params)


def torch_vs_flax(model: FunctionalModel, inputs: Sequence[torch.Tensor]) -> Comparison:
    """The torch `apply` and the Flax reference on the same parameters and inputs, under the `flax` policy."""
    with torch.no_grad():
        out = model(*inputs)
    refs = [to_numpy(t) for t in (out if isinstance(out, (tuple, list)) else [out])]
    fn = flax_reference.build(model)
    import jax
    cands = [np.asarray(a) for a in jax.tree_util.tree_leaves(fn(*(tensor_to_jax(t) for t in inputs)))]
    policy = TolerancePolicy()
    return compare_outputs([str(i) for i in range(len(refs))], refs, cands,
                           [policy.for_output("flax", r.dtype) for r in refs])


def bench_module(name: str) -> ModuleType:
    """bench/<name>.py imported as module `bench_<name>` (bench/ is scripts, not a package), once per session."""
    key = f"bench_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).resolve().parents[1] / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]

"""The `flax` target: the model's independent Flax NNX implementation, jitted, on the same parameters.

The reference lives in crossgraph.models (FunctionalModel.flax_reference names it); this is the one place the
compiler reaches into models, lazily, so that nothing on the torch side imports jax.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Sequence

import numpy as np
import torch

from crossgraph.compiler.subject import Subject
from crossgraph.graphs import FunctionalModel, InputError


def unavailable(subject: Subject) -> str | None:
    """Why this target cannot run on `subject`, or None."""
    model = subject.model
    if not isinstance(model, FunctionalModel) or not model.flax_reference:
        return "the model has no Flax reference (only crossgraph functional models carry one)"
    return None


def load_factory(reference: str) -> Callable[[Any, Any], Any]:
    """The `(config, jax params) -> nnx.Module` function a "module:function" reference names."""
    module_name, _, attr = reference.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise InputError(f"Flax reference '{reference}' cannot be loaded: {exc}") from exc


def build(model: FunctionalModel) -> Callable[..., Any]:
    """The reference as a jitted function of jax arrays."""
    import jax
    from flax import nnx

    from crossgraph.models.convert import to_jax

    factory = load_factory(model.flax_reference or "")
    graphdef, state = nnx.split(factory(model.config, to_jax(model.params)))
    jitted = jax.jit(lambda st, *xs: nnx.merge(graphdef, st)(*xs))
    return lambda *xs: jitted(state, *xs)


def prepare(subject: Subject) -> Callable[[Sequence[torch.Tensor]], list[np.ndarray]]:
    """The reference built once; the returned function runs it on torch inputs and gives numpy outputs."""
    import jax

    from crossgraph.models.convert import tensor_to_jax

    fn = build(subject.model)

    def run(inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
        out = fn(*(tensor_to_jax(t) for t in inputs))
        return [np.asarray(a) for a in jax.tree_util.tree_leaves(out)]

    return run

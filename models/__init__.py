"""crossgraph.models: functional torch models over one parameter tree, and their Flax NNX references.

Each model module has `init(config, seed)`, `apply(params, *inputs, config=...)`, `model(config)` returning a
FunctionalModel, and SPEC factories `tiny()` / `small()`. Flax references live in `<name>_flax.py` and are
imported only when asked for, so the torch side never pays for jax.
"""

from crossgraph.graphs import FunctionalModel

__all__ = ["FunctionalModel"]

"""Move parameter trees between torch and jax, and build Flax NNX modules from them.

Integer and float widths: crossgraph leaves `jax_enable_x64` off (JAX's default). int64 tensors become int32
(values outside int32 are an error, never a silent wrap); float64 tensors are an error unless x64 is enabled.
bfloat16 and float16 keep their dtype.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import torch
from flax import nnx

from crossgraph.graphs import InputError, ParamTree, map_tree

M = TypeVar("M", bound=nnx.Module)
_INT32 = np.iinfo(np.int32)


def tensor_to_jax(t: torch.Tensor) -> jax.Array:
    """One torch tensor as a jax array, under the width policy in this module's docstring."""
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        return jnp.asarray(t.float().numpy().astype(ml_dtypes.bfloat16))
    a = t.numpy()
    x64 = bool(jax.config.read("jax_enable_x64"))
    if a.dtype == np.int64 and not x64:
        if a.size and (a.min() < _INT32.min or a.max() > _INT32.max):
            raise InputError("an int64 tensor holds values outside int32, which JAX uses without x64")
        a = a.astype(np.int32)
    if a.dtype == np.float64 and not x64:
        raise InputError("float64 tensors need jax_enable_x64; crossgraph leaves it off (cast to float32)")
    return jnp.asarray(a)


def array_to_torch(a: Any) -> torch.Tensor:
    """One jax (or numpy) array as a torch tensor; bfloat16 round-trips exactly."""
    a = np.asarray(a)
    if a.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(a.copy())


def to_jax(params: ParamTree) -> dict[str, Any]:
    """A torch parameter tree as the same tree of jax arrays."""
    return map_tree(tensor_to_jax, params)


def to_torch(params: ParamTree) -> dict[str, Any]:
    """A jax parameter tree as the same tree of torch tensors."""
    return map_tree(array_to_torch, params)


# ---- pieces of the torch-layout -> Flax-layout mapping, shared by every model's reference ---------------------
def linear(p: ParamTree) -> dict[str, Any]:
    """torch Linear {weight [out, in], bias} -> nnx.Linear {kernel [in, out], bias}."""
    out = {"kernel": p["weight"].T}
    if "bias" in p:
        out["bias"] = p["bias"]
    return out


def norm(p: ParamTree) -> dict[str, Any]:
    """torch LayerNorm/RMSNorm {weight, bias?} -> nnx.LayerNorm/RMSNorm {scale, bias?}."""
    out = {"scale": p["weight"]}
    if "bias" in p:
        out["bias"] = p["bias"]
    return out


def embed(p: ParamTree) -> dict[str, Any]:
    """torch Embedding {weight [num, dim]} -> nnx.Embed {embedding [num, dim]}."""
    return {"embedding": p["weight"]}


def conv(p: ParamTree) -> dict[str, Any]:
    """torch Conv2d {weight OIHW, bias?} -> nnx.Conv {kernel HWIO, bias?}."""
    out = {"kernel": jnp.transpose(p["weight"], (2, 3, 1, 0))}
    if "bias" in p:
        out["bias"] = p["bias"]
    return out


def build_nnx(make: Callable[[], M], pure: dict[str, Any]) -> M:
    """Build `make()` abstractly (no random init) and fill it with `pure`, a Flax pure dict.

    Every leaf must be given with the shape and dtype the module declares; a missing, extra or mismatched leaf
    raises an error that lists them all.
    """
    graphdef, state = nnx.split(nnx.eval_shape(make))
    want = _flat(nnx.to_pure_dict(state))
    got = _flat(pure)
    def name(path: tuple[Any, ...]) -> str:
        return ".".join(map(str, path))

    problems = [f"missing {name(k)}" for k in sorted(set(want) - set(got), key=name)]
    problems += [f"unexpected {name(k)}" for k in sorted(set(got) - set(want), key=name)]
    problems += [f"{name(k)}: shape {tuple(got[k].shape)} != {tuple(want[k].shape)}"
                 for k in sorted(set(want) & set(got), key=name) if tuple(got[k].shape) != tuple(want[k].shape)]
    if problems:
        raise ValueError("parameters do not fit the Flax module: " + "; ".join(problems))
    filled = {k: jnp.asarray(got[k], dtype=want[k].dtype) for k in want}
    nnx.replace_by_pure_dict(state, _unflat(filled))
    return nnx.merge(graphdef, state)


def _flat(tree: Any, prefix: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], Any]:
    if isinstance(tree, dict):
        out: dict[tuple[Any, ...], Any] = {}
        for k, v in tree.items():
            out.update(_flat(v, prefix + (k,)))
        return out
    return {prefix: tree}


def _unflat(flat: dict[tuple[Any, ...], Any]) -> dict[Any, Any]:
    tree: dict[Any, Any] = {}
    for path, leaf in flat.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = leaf
    return tree

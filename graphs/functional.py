"""Functional models: a pure `apply(params, *inputs)` over one nested-dict parameter tree.

The tree's paths ("h.0.attn.c_attn.weight") are the parameter names everywhere: in the captured graph, in the
Flax reference and in saved artifacts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Union

import torch
from torch import nn

ParamTree = Mapping[str, Union["ParamTree", Any]]
"""A nested dict whose leaves are tensors (torch or jax, depending on which side holds it)."""


@dataclass(frozen=True)
class FunctionalModel:
    """A model as data: `apply(params, *inputs)`, its parameter tree, its config and where its Flax twin lives.

    `flax_reference` is "module:function"; the function takes (config, jax parameter tree) and returns an
    nnx.Module called on jax arrays. It is a string so that the torch side never imports jax.
    """

    name: str
    apply: Callable[..., Any]
    params: ParamTree
    config: Any = None
    flax_reference: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __call__(self, *inputs: Any, **kwargs: Any) -> Any:
        return self.apply(self.params, *inputs, **kwargs)


def flatten_tree(tree: ParamTree, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {"a.b.c": leaf}; keys must be non-empty strings without dots."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if not isinstance(key, str) or not key or "." in key:
            raise ValueError(f"parameter tree key {key!r} at '{prefix or '<root>'}' must be a non-empty "
                             "string without '.'")
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping):
            flat.update(flatten_tree(value, path))
        else:
            flat[path] = value
    return flat


def unflatten_tree(flat: Mapping[str, Any]) -> dict[str, Any]:
    """{"a.b.c": leaf} -> nested dict; the inverse of `flatten_tree`."""
    tree: dict[str, Any] = {}
    for path, leaf in flat.items():
        node = tree
        *parents, last = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = leaf
    return tree


def map_tree(fn: Callable[[Any], Any], tree: ParamTree) -> dict[str, Any]:
    """Apply `fn` to every leaf, keeping the nesting."""
    return {k: map_tree(fn, v) if isinstance(v, Mapping) else fn(v) for k, v in tree.items()}


class _TreeNode(nn.Module):
    """One level of a parameter tree as a module, so parameter FQNs equal tree paths."""


def _fill(module: nn.Module, tree: ParamTree, prefix: str) -> None:
    for key, value in tree.items():
        path = f"{prefix}.{key}" if prefix else key
        if hasattr(module, key) and key not in module._modules and key not in module._parameters:
            raise ValueError(f"parameter tree key '{path}' clashes with an nn.Module attribute; rename it")
        if isinstance(value, Mapping):
            child = _TreeNode()
            _fill(child, value, path)
            module.add_module(key, child)
        elif not isinstance(value, torch.Tensor):
            raise TypeError(f"parameter '{path}' is a {type(value).__name__}, expected a torch.Tensor")
        elif value.is_floating_point() or value.is_complex():
            module.register_parameter(key, nn.Parameter(value.detach(), requires_grad=False))
        else:
            module.register_buffer(key, value.detach())


def _read(module: nn.Module) -> dict[str, Any]:
    tree: dict[str, Any] = {name: _read(child) for name, child in module.named_children()}
    tree.update(module.named_parameters(recurse=False))
    tree.update(module.named_buffers(recurse=False))
    return tree


class FunctionalModule(nn.Module):
    """Holds a FunctionalModel's tree as parameters and calls its `apply` in forward (what torch.export sees)."""

    def __init__(self, model: FunctionalModel) -> None:
        super().__init__()
        flatten_tree(model.params)  # validates the keys before anything is registered
        _fill(self, model.params, "")
        self._crossgraph_apply = model.apply

    def forward(self, *inputs: Any, **kwargs: Any) -> Any:
        return self._crossgraph_apply(_read(self), *inputs, **kwargs)

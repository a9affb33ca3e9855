"""The one translation table: ATen OpOverloads (and the Python operators FX graphs use on sizes) to JAX functions.

Each op family lives in its own module and registers its entries with `@op(...)`; `lookup` loads every family
on first use, so importing this module alone stays cheap.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, TypeVar

import torch

F = TypeVar("F", bound=Callable[..., Any])
Refusal = Callable[[torch.fx.Node], "str | None"]

FAMILIES = ("elementwise", "reductions", "shape", "nn", "pooling", "linalg", "fft", "indexing", "creation",
            "symbolic", "backward", "dialect", "quant")
"""The modules of `crossgraph.compiler.jaxlower` that fill the table, one op family each."""


@dataclasses.dataclass(frozen=True)
class Translation:
    """How one target becomes JAX: `fn`, and `refuse`, which names what JAX cannot do for a given node."""

    fn: Callable[..., Any]
    refuse: Refusal | None = None


_TABLE: dict[Any, Translation] = {}
_loaded = False


def op(*targets: Any, refuse: Refusal | None = None) -> Callable[[F], F]:
    """Register the decorated function as the JAX translation of every target given.

    The function receives the node's arguments in the op schema's order, tensors as jax arrays and sizes as ints
    or symbolic dimensions; keyword-only schema arguments arrive as keywords (layout, device, pin_memory,
    memory_format and non_blocking never do: JAX has no use for them). `refuse(node)`, when given, returns why a
    particular use cannot be lowered (random dropout, data-dependent shapes), or None; it runs when lowering.
    """
    def register(fn: F) -> F:
        for target in targets:
            if target in _TABLE:
                raise ValueError(f"{target} has two JAX translations: {_TABLE[target].fn.__name__} and "
                                 f"{fn.__name__}")
            _TABLE[target] = Translation(fn, refuse)
        return fn
    return register


def _load() -> None:
    global _loaded
    if not _loaded:
        for family in FAMILIES:
            importlib.import_module(f"crossgraph.compiler.jaxlower.{family}")
        _loaded = True


def lookup(target: Any) -> Translation | None:
    """The translation of `target`, or None when the table has none."""
    _load()
    return _TABLE.get(target)


def targets() -> list[Any]:
    """Every target in the table."""
    _load()
    return list(_TABLE)


def argument(node: torch.fx.Node, index: int, name: str, default: Any = None) -> Any:
    """A node's argument by schema position or keyword name, for `refuse` checks."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


class Unsupported(Exception):
    """Raised by a translation for a use JAX cannot express (found while tracing); becomes an UnsupportedOpError."""

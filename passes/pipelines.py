"""Named pass pipelines: the passes each kind of target runs by default, in order.

A pipeline name can stand wherever pass names are accepted (`--passes serve-onnx,cse`); `expand` spells it out.
"""

from __future__ import annotations

from typing import Iterable

from crossgraph.graphs import InputError
from crossgraph.passes.registry import resolve

CLEANUP = ("noop_removal", "cse", "constant_folding", "dead_code")
"""The cleanup passes, in the order that lets each one expose work for the next."""

PIPELINES: dict[str, tuple[str, ...]] = {
    "cleanup": CLEANUP,
    "serve-onnx": CLEANUP,
    "serve-inductor": CLEANUP,
    "jax": CLEANUP,
}
"""Pipeline name -> pass names."""


def expand(names: str | Iterable[str]) -> tuple[str, ...]:
    """Pass names with every pipeline name replaced by its passes; unknown names are an InputError."""
    wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    out: list[str] = []
    for name in wanted:
        out.extend(PIPELINES.get(name, (name,)))
    try:
        resolve(out)
    except InputError as exc:
        raise InputError(f"{exc}; pipelines: {', '.join(PIPELINES)}") from exc
    return tuple(out)

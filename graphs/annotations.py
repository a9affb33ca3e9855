"""Typed node annotations kept in `node.meta`, and their JSON form so they survive save/load.

Each annotation class has a `kind`; `node.meta["crossgraph"]` maps kind -> object. On save the objects are
written into `node.meta["custom"]["crossgraph"]`, which torch.export's serializer keeps for computing nodes; it
keeps no meta of placeholders or of the getitems of multi-output ops (torch 2.13), so their annotations (weight
and input shardings, a layer norm's output sharding) are written into the graph module's `meta["custom"]`, which
it keeps, by node name.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, ClassVar, TypeVar

import torch.fx

META_KEY = "crossgraph"
UNKEPT_KEY = "crossgraph.unkept"  # in the graph module's custom meta: {node name: {kind: json}}
_KINDS: dict[str, type["Annotation"]] = {}

A = TypeVar("A", bound="Annotation")


@dataclasses.dataclass(frozen=True)
class Annotation:
    """Base of node annotations: frozen dataclasses of JSON-friendly fields, registered by `kind`."""

    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            _KINDS[cls.kind] = cls

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls: type[A], data: dict[str, Any]) -> A:
        return cls(**data)


def get(node: torch.fx.Node, cls: type[A]) -> A | None:
    """The annotation of type `cls` on `node`, or None."""
    return node.meta.get(META_KEY, {}).get(cls.kind)


def put(node: torch.fx.Node, annotation: Annotation) -> None:
    """Attach `annotation` to `node`, replacing one of the same kind."""
    node.meta.setdefault(META_KEY, {})[annotation.kind] = annotation


def encode(graph: torch.fx.Graph) -> None:
    """Copy every node's annotations into JSON custom meta, ready for torch.export.save: a computing node's own,
    those of placeholders and getitems the owning module's."""
    held = {}
    for node in graph.nodes:
        anns = node.meta.get(META_KEY)
        if anns:
            node.meta.setdefault("custom", {})[META_KEY] = held[node.name] = {k: a.to_json() for k, a in anns.items()}
    unkept = {node.name: held[node.name] for node in graph.nodes if node.name in held
              and (node.op == "placeholder" or node.target is operator.getitem)}
    custom = graph.owning_module.meta.setdefault("custom", {})
    if unkept:
        custom[UNKEPT_KEY] = unkept
    else:
        custom.pop(UNKEPT_KEY, None)


def decode(graph: torch.fx.Graph) -> None:
    """Rebuild typed annotations from custom meta after torch.export.load; unknown kinds are an error."""
    unkept = graph.owning_module.meta.get("custom", {}).get(UNKEPT_KEY, {})
    for node in graph.nodes:
        stored = {**node.meta.get("custom", {}).get(META_KEY, {}), **unkept.get(node.name, {})}
        if not stored:
            continue
        unknown = sorted(set(stored) - set(_KINDS))
        if unknown:
            raise ValueError(f"node {node.name} carries unknown annotation kinds {unknown}")
        node.meta[META_KEY] = {k: _KINDS[k].from_json(v) for k, v in stored.items()}

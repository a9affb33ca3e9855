"""Sharding in the graph: a named device `Mesh` and the `Sharding` annotation (a PartitionSpec over that mesh).

A Sharding says, for each dimension of a node's value, which mesh axes split it (major first; none: the dimension
is whole on every device), and over which mesh axes the value is a partial sum still to be reduced (what a
row-parallel matmul produces before its all-reduce). Plans put Shardings on parameters and inputs
(`source="plan"`, or `"user"` for overrides); propagation fills in every other node (`source="propagated"`).
Targets read them: JAX as NamedSharding/PartitionSpec, torch as DTensor placements.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import TYPE_CHECKING, Any, Sequence

import torch

from crossgraph.graphs import annotations

from crossgraph.graphs.annotations import Annotation

if TYPE_CHECKING:
    from crossgraph.graphs.graph import Graph
from crossgraph.graphs.errors import InputError

SOURCES = ("plan", "user", "propagated")
_AXIS = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class UnevenShardError(InputError):
    """A tensor dimension does not divide evenly over the mesh axes that split it (JAX would silently replicate
    it or pad it; crossgraph refuses)."""


@dataclasses.dataclass(frozen=True)
class Mesh:
    """Named device-mesh axes and their sizes, major first, e.g. (("data", 2), ("model", 4)) for 8 devices."""

    axes: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "axes", tuple((str(n), int(s)) for n, s in self.axes))
        if not self.axes:
            raise InputError("a mesh needs at least one axis")
        names = [n for n, _ in self.axes]
        for name, size in self.axes:
            if not _AXIS.match(name):
                raise InputError(f"mesh axis name {name!r} is not an identifier")
            if size < 1:
                raise InputError(f"mesh axis {name} has size {size}; sizes are positive")
        if len(set(names)) != len(names):
            raise InputError(f"mesh axis names repeat: {', '.join(names)}")

    @classmethod
    def parse(cls, text: str) -> "Mesh":
        """`data=2,model=4` -> Mesh((("data", 2), ("model", 4))); anything else is an InputError."""
        axes = []
        for part in (p.strip() for p in text.split(",")):
            name, eq, size = part.partition("=")
            if not eq or not size.strip().isdigit():
                raise InputError(f"bad mesh {text!r}: write axes as name=size, e.g. data=2,model=4")
            axes.append((name.strip(), int(size)))
        return cls(tuple(axes))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.axes)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(s for _, s in self.axes)

    @property
    def size(self) -> int:
        """The number of devices."""
        return math.prod(self.shape)

    def axis_size(self, name: str) -> int:
        for axis, size in self.axes:
            if axis == name:
                return size
        raise InputError(f"mesh {self} has no axis {name!r}")

    def __str__(self) -> str:
        return ",".join(f"{n}={s}" for n, s in self.axes)


@dataclasses.dataclass(frozen=True)
class Sharding(Annotation):
    """How one value is laid out on `mesh`: `spec[d]` names the mesh axes splitting dimension d (empty: whole),
    `partial` the mesh axes over which it is a partial sum, `source` who decided it (plan, user, propagated)."""

    kind = "sharding"
    mesh: Mesh
    spec: tuple[tuple[str, ...], ...]
    partial: tuple[str, ...] = ()
    source: str = "propagated"

    def __post_init__(self) -> None:
        spec = tuple((d,) if isinstance(d, str) else tuple(d or ()) for d in self.spec)
        object.__setattr__(self, "spec", spec)
        object.__setattr__(self, "partial", tuple(self.partial))
        used = [a for d in spec for a in d] + list(self.partial)
        for axis in used:
            self.mesh.axis_size(axis)
        if len(set(used)) != len(used):
            raise InputError(f"sharding {self} uses a mesh axis twice")
        if self.source not in SOURCES:
            raise ValueError(f"unknown sharding source {self.source!r}; known: {', '.join(SOURCES)}")

    @classmethod
    def replicated(cls, mesh: Mesh, ndim: int, source: str = "propagated") -> "Sharding":
        return cls(mesh, ((),) * ndim, source=source)

    def to_json(self) -> dict[str, Any]:
        return {"mesh": [list(a) for a in self.mesh.axes], "spec": [list(d) for d in self.spec],
                "partial": list(self.partial), "source": self.source}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Sharding":
        return cls(Mesh(tuple(tuple(a) for a in data["mesh"])), tuple(tuple(d) for d in data["spec"]),
                   tuple(data["partial"]), data["source"])

    def with_(self, **changes: Any) -> "Sharding":
        return dataclasses.replace(self, **changes)

    @property
    def is_replicated(self) -> bool:
        return not self.partial and not any(self.spec)

    def splits(self, dim: int) -> int:
        """How many pieces dimension `dim` is cut into."""
        return math.prod(self.mesh.axis_size(a) for a in self.spec[dim])

    def sharded_axes(self) -> tuple[str, ...]:
        return tuple(a for d in self.spec for a in d)

    def local_shape(self, shape: Sequence[int], tensor: str = "value") -> tuple[int, ...]:
        """Each device's piece of a tensor of `shape`; an uneven split raises UnevenShardError naming `tensor`,
        the dimension and the mesh axes."""
        if len(shape) != len(self.spec):
            raise InputError(f"sharding {self} has {len(self.spec)} dimensions but {tensor} has shape "
                             f"{list(shape)}")
        local = []
        for dim, size in enumerate(shape):
            pieces = self.splits(dim)
            if int(size) % pieces:
                axes = " x ".join(f"{a} ({self.mesh.axis_size(a)})" for a in self.spec[dim])
                raise UnevenShardError(f"{tensor}: dimension {dim} of size {size} does not split evenly over "
                                       f"mesh axis {axes}")
            local.append(int(size) // pieces)
        return tuple(local)

    def local_bytes(self, value: torch.Tensor, tensor: str = "value") -> int:
        """The bytes one device holds of `value` (a real or fake tensor)."""
        return math.prod(self.local_shape(value.shape, tensor)) * value.element_size()

    def partition_spec(self) -> tuple[str | tuple[str, ...] | None, ...]:
        """The spec as JAX's PartitionSpec takes it: None, one axis name, or a tuple of names per dimension."""
        return tuple(None if not d else d[0] if len(d) == 1 else d for d in self.spec)

    def layout(self) -> str:
        """The spec as text, `P(data, None, model)`, with ` partial(model)` for partial sums."""
        dims = ", ".join("None" if not d else d[0] if len(d) == 1 else "(" + ", ".join(d) + ")" for d in self.spec)
        return f"P({dims})" + (f" partial({', '.join(self.partial)})" if self.partial else "")

    def __str__(self) -> str:
        return f"{self.layout()} on {self.mesh} [{self.source}]"


def mesh_of(graph: "Graph", mesh: Mesh | None = None) -> Mesh:
    """The one mesh of `graph`'s Sharding annotations (and `mesh`, when given): what an engine runs it on. No
    mesh at all, or several, is an InputError."""
    meshes = {s.mesh for node in graph.fx.nodes if (s := annotations.get(node, Sharding)) is not None}
    meshes |= {mesh} if mesh is not None else set()
    if not meshes:
        raise InputError(f"graph {graph.name} carries no Sharding annotations: shard it first "
                         "(crossgraph.passes.sharding.shard)")
    if len(meshes) > 1:
        raise InputError(f"graph {graph.name}: its Shardings (and the mesh given) name several meshes "
                         f"({'; '.join(sorted(map(str, meshes)))}); one graph runs on one mesh")
    return meshes.pop()

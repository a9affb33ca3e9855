"""How much of core ATen (the aten ops tagged `torch.Tag.core`) the JAX table translates."""

from __future__ import annotations

from typing import NamedTuple

import torch

from crossgraph.compiler.jaxlower import registry


class Coverage(NamedTuple):
    """The core-ATen ops the table lowers, and all core-ATen ops, each sorted by name."""

    lowered: tuple[torch._ops.OpOverload, ...]
    core: tuple[torch._ops.OpOverload, ...]

    @property
    def missing(self) -> tuple[torch._ops.OpOverload, ...]:
        """Core-ATen ops without a translation."""
        done = set(self.lowered)
        return tuple(o for o in self.core if o not in done)

    def __str__(self) -> str:
        return f"jax lowers {len(self.lowered)} of {len(self.core)} core ATen ops"


def core_aten_ops() -> list[torch._ops.OpOverload]:
    """Every aten OpOverload tagged core, sorted by name."""
    ops = []
    for name in dir(torch.ops.aten):
        packet = getattr(torch.ops.aten, name)
        if isinstance(packet, torch._ops.OpOverloadPacket):
            ops.extend(o for o in (getattr(packet, ov) for ov in packet.overloads()) if torch.Tag.core in o.tags)
    return sorted(ops, key=str)


def coverage() -> Coverage:
    """(lowered core-ATen ops, all core-ATen ops)."""
    core = core_aten_ops()
    table = set(registry.targets())
    return Coverage(tuple(o for o in core if o in table), tuple(core))

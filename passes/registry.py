"""The pass registry: every pass by name with a one-line description, as `crossgraph passes` lists them.

A pass function takes a Graph and returns a Graph; it may rewrite the Graph it is given in place. A registered
`Pass` never changes its caller's graph: calling it runs the function on a structural copy (weights shared).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

from crossgraph.graphs import Graph, InputError
from crossgraph.passes import program

PassFn = Callable[[Graph], Graph]
_PASSES: dict[str, "Pass"] = {}


@dataclasses.dataclass(frozen=True)
class Pass:
    """A named Graph -> Graph rewrite with a one-line description."""

    name: str
    description: str
    fn: PassFn

    def __call__(self, graph: Graph) -> Graph:
        """Run on a copy of `graph`, so the caller's graph stays as it was (to compare against, to bisect)."""
        out = self.fn(program.copy_graph(graph, lazy=True))
        program.sync_outputs(out)
        program.finish(out)  # the PassManager verifies the result
        return out


def register(name: str, description: str) -> Callable[[PassFn], Pass]:
    """Decorator: register a pass function under `name`; the decorated name becomes the `Pass`."""
    def wrap(fn: PassFn) -> Pass:
        if name in _PASSES:
            raise ValueError(f"a pass named '{name}' is already registered ({_PASSES[name].fn.__module__})")
        _PASSES[name] = Pass(name, description, fn)
        return _PASSES[name]
    return wrap


def as_pass(p: Pass | PassFn) -> Pass:
    """A Pass as is; a plain function as an unregistered Pass named after it (for experiments and tests)."""
    if isinstance(p, Pass):
        return p
    doc = (p.__doc__ or "").strip().splitlines()
    return Pass(getattr(p, "__name__", repr(p)), doc[0] if doc else "", p)


def available() -> list[tuple[str, str]]:
    """(name, description) of every registered pass, in registration order."""
    return [(p.name, p.description) for p in _PASSES.values()]


def resolve(names: str | Iterable[str]) -> list[Pass]:
    """Passes by name, from a list or a comma-separated string; unknown names are an InputError."""
    wanted = [n.strip() for n in (names.split(",") if isinstance(names, str) else names)]
    wanted = [n for n in wanted if n]
    unknown = [n for n in wanted if n not in _PASSES]
    if unknown:
        raise InputError(f"unknown pass{'es' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                         f"known passes: {', '.join(_PASSES) or '(none)'}")
    return [_PASSES[n] for n in wanted]

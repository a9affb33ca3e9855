"""shard: prepare a captured graph for a sharding plan, annotate it, and propagate the plan through it.

Preparation makes every engine's sharding rules apply: GPT-2's fused Q/K/V projection is split in three
(`split_qkv`, so a column split gives each device whole heads) and explicit softmax attention becomes one
attention op over [batch, heads, T, head_dim] (`fuse_attention`): written out, its batched matmuls flatten batch
and heads into one dimension, where a split over heads cannot stay.
"""

from __future__ import annotations

from typing import Mapping

from crossgraph.graphs import Graph, annotations
from crossgraph.graphs.sharding import Mesh, Sharding, mesh_of
from crossgraph.passes import program
from crossgraph.passes.manager import PassManager
from crossgraph.passes.shard_plans import SpecLike, apply_plan
from crossgraph.passes.shard_propagation import ShardingReport, propagate

PREPARE = ("noop_removal", "split_qkv", "fuse_attention", "dead_code")
"""The passes run before a plan (see the module docstring)."""


def shard(graph: Graph, plan: str, mesh: Mesh, overrides: Mapping[str, SpecLike] | None = None, *,
          prepare: bool = True) -> tuple[Graph, ShardingReport]:
    """A copy of `graph` (prepared unless `prepare=False`) with `plan`'s Shardings on its weights and inputs
    and propagated ones on every other node, and the report of implied collectives and per-device memory."""
    out = PassManager(PREPARE).run(graph).graph if prepare else program.copy_graph(graph)
    apply_plan(out, plan, mesh, overrides)
    return out, propagate(out, mesh)


def weight_shardings(graph: Graph) -> dict[str, Sharding]:
    """Each stored weight's Sharding by its state name, in the program's order (replicated where none)."""
    weights = program.constant_inputs(graph)
    return {name: annotations.get(node, Sharding) or Sharding.replicated(mesh_of(graph), node.meta["val"].dim())
            for node, name in program.state_names(graph).items() if node in weights}

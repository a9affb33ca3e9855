"""Named pass pipelines: the passes each kind of target runs by default, in order.

A pipeline name can stand wherever pass names are accepted (`--passes serve-onnx,cse`); `expand` spells it out.
"""

from __future__ import annotations

from typing import Iterable

from crossgraph.graphs import InputError
from crossgraph.passes.registry import resolve

CLEANUP = ("noop_removal", "cse", "constant_folding", "dead_code")
"""The cleanup passes, in the order that lets each one expose work for the next."""

STRUCTURAL = ("fold_lora", "noop_removal", "fuse_attention", "fuse_qkv")
"""Fusions every target gains from: LoRA merged into its weight (served as one matmul), attention as one op (each
target's fused attention kernel), one matmul for projections of one input. noop_removal first, so views and
eval-mode dropout copies do not hide patterns."""

ELEMENTWISE = ("fuse_bias_gelu", "fuse_add_layer_norm", "fuse_rms_norm", "fuse_rotary")
"""Fusions a runtime without its own elementwise fuser needs (ONNX Runtime's contrib kernels); Inductor and XLA
fuse these themselves (their tables decompose the ops back into the same ATen), so their pipelines leave them out.
fuse_rotary, after fuse_attention and fuse_qkv, fires the same in either order: its x is the head split of a
projection (fused or not), its output the query or key that attention reads, and neither pattern holds the other."""

PIPELINES: dict[str, tuple[str, ...]] = {
    "cleanup": CLEANUP,
    "serve-onnx": STRUCTURAL + ELEMENTWISE + CLEANUP,
    "serve-inductor": STRUCTURAL + CLEANUP,
    "jax": STRUCTURAL + CLEANUP,
}
"""Pipeline name -> pass names. Fusions first, then cleanup folds the weights they concatenated or merged."""


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

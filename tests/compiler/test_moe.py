"""Mixture-of-Experts: what Hugging Face MoE layers export to, on the onnx and jax targets (inductor too for the
models): transformers' grouped matmul decomposed at capture (graphs/decompositions.py), histc and bincount counting
tokens per expert (jaxlower, onnx_aten), the data-dependent shapes of routing refused by name where a target
needs static shapes, and tiny Mixtral and Qwen3-MoE models passing every CPU target.

Each op module is captured and lowered once per target; its edge cases (empty experts, every token on one expert,
values on bin edges) run on that one artifact.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import transformers  # noqa: F401  (registers transformers::grouped_mm_fallback)
import transformers.integrations.moe  # noqa: F401

from crossgraph.compiler import check
from crossgraph.compiler.cli import main
from crossgraph.compiler.lower import lower
from crossgraph.graphs import UnsupportedOpError, capture
from fixtures import moe_specs

pytest.importorskip("onnxruntime")
MOE_SPECS = Path(moe_specs.__file__)
TARGETS = ("jax", "onnx")


@functools.lru_cache(maxsize=None)
def _lowered(module: type[torch.nn.Module], target: str, *shapes: tuple[tuple[int, ...], torch.dtype]) -> Any:
    """`module()` captured at inputs of `shapes` and lowered to `target`, once per session."""
    inputs = tuple(torch.zeros(s, dtype=d) for s, d in shapes)
    return lower(capture(module(), inputs), target)


def _run(module: type[torch.nn.Module], target: str, *inputs: torch.Tensor) -> list[np.ndarray]:
    return _lowered(module, target, *((tuple(x.shape), x.dtype) for x in inputs))(*inputs)


# ---- transformers::grouped_mm_fallback ---------------------------------------------------------------------------
class GroupedMM(torch.nn.Module):
    """transformers' grouped matmul as its experts call it: rows sorted by expert, offs the cumsum of counts."""

    def forward(self, x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        offs = torch.cumsum(counts, dim=0, dtype=torch.int32)
        return torch.ops.transformers.grouped_mm_fallback(x, weight, offs)


COUNTS = {  # 10 rows over 4 experts
    "mixed": [3, 0, 2, 5],
    "all_on_first": [10, 0, 0, 0],
    "all_on_last": [0, 0, 0, 10],
    "empty_experts_and_dropped_rows": [0, 4, 0, 2],  # rows 6..9 past offs[-1]: zeros
    "no_rows": [0, 0, 0, 0],
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("k", [8, 3], ids=["experts_le_k", "experts_gt_k"])  # the two loop-free forms
def test_grouped_mm_fallback_matches_its_loop(target: str, k: int) -> None:
    gen = torch.Generator().manual_seed(k)
    for name, counts in COUNTS.items():
        x, w = torch.randn(10, k, generator=gen), torch.randn(4, k, 6, generator=gen)
        counts = torch.tensor(counts)
        want = GroupedMM()(x, w, counts).numpy()
        (got,) = _run(GroupedMM, target, x, w, counts)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=f"{target} {name}")


def test_grouped_mm_is_decomposed_at_capture_into_aten() -> None:
    x, w, counts = torch.randn(10, 8), torch.randn(4, 8, 6), torch.tensor([3, 0, 2, 5])
    graph = capture(GroupedMM(), (x, w, counts))
    ops = {str(n.target) for n in graph.fx.nodes if n.op == "call_function"}
    assert not any("grouped_mm" in o for o in ops), ops
    torch.testing.assert_close(graph.exported.module()(x, w, counts), GroupedMM()(x, w, counts))


class AtenGroupedMM(torch.nn.Module):
    """torch's own grouped matmul (transformers calls it for bfloat16 weights)."""

    def forward(self, x: torch.Tensor, weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        offs = torch.cumsum(counts, dim=0, dtype=torch.int32)
        return torch.nn.functional.grouped_mm(x, weight, offs=offs)


@pytest.mark.parametrize("target", ["jax"])  # ONNX Runtime's CPU EP has no bfloat16 kernels (Expand, MatMul)
def test_aten_grouped_mm_matches_torch(target: str) -> None:
    gen = torch.Generator().manual_seed(0)
    # bfloat16 (torch.export's meta for it takes nothing else); 16-byte rows (torch's CPU kernel needs them)
    x, w = torch.randn(10, 8, generator=gen).bfloat16(), torch.randn(4, 8, 8, generator=gen).bfloat16()
    for counts in ([3, 0, 2, 5], [0, 0, 0, 10]):
        counts = torch.tensor(counts)
        (got,) = _run(AtenGroupedMM, target, x, w, counts)
        want = AtenGroupedMM()(x, w, counts).float().numpy()
        np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-2, atol=1e-2)


# ---- histc --------------------------------------------------------------------------------------------------------
class ExpertHistc(torch.nn.Module):
    """Tokens per expert as transformers counts them: histc of the expert ids over [0, E - 1]."""

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.histc(ids, bins=4, min=0, max=3)


class RangeHistc(torch.nn.Module):
    """histc's default: the range taken from the data (widened by 1 each way when every value is equal)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.histc(x, bins=5)


class EdgeHistc(torch.nn.Module):
    """Bins that do not divide the range evenly: values near an edge land where torch's arithmetic puts them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.histc(x, bins=7, min=-1.3, max=2.2)


HISTC_CASES = [
    (ExpertHistc, [0, 3, 3, 1, 0, 3, 2, 2]),               # mixed
    (ExpertHistc, [3, 3, 3, 3, 3, 3, 3, 3]),               # all tokens on one expert (the closed last bin)
    (ExpertHistc, [0, 0, 0, 0, 0, 0, 0, 0]),
    (ExpertHistc, [-1, 4, 7, 3.5, float("nan"), 0, 1, 2]),  # outside the range and NaN: not counted
    (RangeHistc, [0.5, -2.0, 3.25, 1.0, 7.0, 2.0, 2.0, 0.0]),
    (RangeHistc, [2.0] * 8),                                 # min == max in the data: [1, 3]
]


@pytest.mark.parametrize("target", TARGETS)
def test_histc_matches_torch(target: str) -> None:
    for module, values in HISTC_CASES:
        x = torch.tensor(values, dtype=torch.float32)
        (got,) = _run(module, target, x)
        np.testing.assert_array_equal(got, module()(x).numpy(), err_msg=f"{target} {module.__name__} {values}")


@pytest.mark.parametrize("target", TARGETS)
def test_histc_bins_values_as_torch_does_near_edges(target: str) -> None:
    edges = torch.linspace(-1.3, 2.2, 8)
    near = torch.cat([edges, torch.nextafter(edges, torch.full_like(edges, 9)),
                      torch.nextafter(edges, torch.full_like(edges, -9)), torch.rand(40) * 3.5 - 1.3])
    (got,) = _run(EdgeHistc, target, near)
    np.testing.assert_array_equal(got, EdgeHistc()(near).numpy())


@pytest.mark.parametrize("target, dtype", [("jax", torch.float16), ("jax", torch.bfloat16), ("onnx", torch.float16)])
def test_histc_in_half_precision(target: str, dtype: torch.dtype) -> None:  # onnxruntime takes no bfloat16 input
    x = (torch.rand(64, generator=torch.Generator().manual_seed(1)) * 3.5 - 1.3).to(dtype)
    (got,) = _run(EdgeHistc, target, x)
    np.testing.assert_array_equal(np.asarray(got, np.float32), EdgeHistc()(x).float().numpy())


# ---- bincount and data-dependent shapes ---------------------------------------------------------------------------
class WeightedBincount(torch.nn.Module):
    def forward(self, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return torch.bincount(ids, weights, minlength=4)


class Bincount(torch.nn.Module):
    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.bincount(ids, minlength=4)


@pytest.mark.parametrize("ids", [[0, 3, 3, 1, 0, 3], [2, 2, 2, 2, 2, 2], [0, 1, 6, 6, 1, 0]],
                         ids=["mixed", "one_expert", "longer_than_minlength"])
def test_bincount_on_onnx_matches_torch(ids: list[int]) -> None:
    ids_t, weights = torch.tensor(ids), torch.rand(6, generator=torch.Generator().manual_seed(0))
    (got,) = _run(WeightedBincount, "onnx", ids_t, weights)
    np.testing.assert_allclose(got, WeightedBincount()(ids_t, weights).numpy(), rtol=1e-6)
    (got,) = _run(Bincount, "onnx", ids_t)
    np.testing.assert_array_equal(got, Bincount()(ids_t).numpy())


class BooleanRouting(torch.nn.Module):
    """Tokens of expert 1 picked by a boolean mask (the eager experts loop): a data-dependent row count."""

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        rows, _ = torch.where(ids == 1)
        return x[rows].sum(0)


class MaskedSelect(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.masked_select(x, x > 0)


@pytest.mark.parametrize("module, inputs, construct", [
    (BooleanRouting, (torch.randn(6, 3), torch.tensor([[0, 1], [1, 2], [2, 3], [3, 0], [1, 0], [2, 2]])),
     "aten.nonzero"),
    (Bincount, (torch.tensor([0, 3, 3, 1]),), "aten.bincount"),
    (MaskedSelect, (torch.randn(3, 4),), "aten.masked_select"),
])
def test_data_dependent_shapes_run_on_onnx_and_are_refused_by_name_on_jax(module: type, inputs: tuple,
                                                                          construct: str) -> None:
    report = check(module(), inputs, ["eager", "onnx", "jax"], oracle=False, localize=False)
    assert report.targets["eager"].status == "pass" and report.targets["onnx"].status == "pass", report.table()
    with pytest.raises(UnsupportedOpError, match=f"{construct}.*data-dependent output shape") as info:
        lower(capture(module(), inputs), "jax")
    assert info.value.target == "jax"


def test_cli_exits_2_naming_a_data_dependent_construct_on_jax(capsys) -> None:
    assert main(["check", f"{MOE_SPECS}:boolean_routing", "--targets", "eager,jax"]) == 2
    err = capsys.readouterr()
    assert "data-dependent output shape" in err.out + err.err


class TopKIndexAddMoE(torch.nn.Module):
    """An MoE layer written the other common way: top-k gating, each (token, expert) pair's row through its
    expert's weight (a gather + bmm), summed back per token with index_add and scatter_add, and tokens per expert
    counted with one_hot."""

    def __init__(self, bias: float) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.gate = torch.nn.Linear(8, 4)
        with torch.no_grad():
            self.gate.bias.copy_(torch.tensor([bias, 0.0, 0.0, 0.0]))  # a large bias: every token's top-1 is 0
        self.experts = torch.nn.Parameter(torch.randn(4, 8, 8, generator=gen))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        weights, experts = torch.topk(torch.softmax(self.gate(x), dim=-1), 2)
        flat = experts.reshape(-1)
        token = torch.arange(x.shape[0]).repeat_interleave(2)
        rows = torch.bmm(x[token].unsqueeze(1), self.experts[flat]).squeeze(1) * weights.reshape(-1, 1)
        added = torch.zeros_like(x).index_add(0, token, rows)
        scattered = torch.zeros_like(x).scatter_add(0, token.unsqueeze(1).expand_as(rows), rows)
        return added, scattered, torch.nn.functional.one_hot(flat, 4).sum(0)


def test_topk_index_add_routing_on_onnx_and_jax() -> None:
    """Every token's first choice is expert 0 (its second one spread over the others)."""
    report = check(TopKIndexAddMoE(50.0), (torch.randn(6, 8),), ["eager", "onnx", "jax"], oracle=False,
                   localize=False)
    assert {t: r.status for t, r in report.targets.items()} == dict.fromkeys(("eager", "onnx", "jax"), "pass"), \
        report.table()


# ---- the models ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("factory", ["mixtral", "qwen3_moe"])
def test_moe_models_pass_onnx_and_jax(factory: str) -> None:
    model, kwargs = getattr(moe_specs, factory)()
    report = check(model, (), ["eager", "onnx", "jax"], kwargs=kwargs)
    for name in ("eager", "onnx", "jax"):
        assert report.targets[name].status == "pass", (name, report.targets[name].error)


def test_mixtral_passes_inductor() -> None:
    """One model on Inductor (AOTInductor compiles for a minute on a loaded 2-core machine); Qwen3-MoE's experts
    are the same ops (checked by hand: `crossgraph check tests/fixtures/moe_specs.py:qwen3_moe --targets inductor`)."""
    model, kwargs = moe_specs.mixtral()
    report = check(model, (), ["eager", "inductor"], kwargs=kwargs)
    assert report.targets["inductor"].status == "pass", report.targets["inductor"].error

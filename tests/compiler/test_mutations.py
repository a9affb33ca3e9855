"""bench/mutations.py's machinery: every mutation kind finds a site in a tiny graph, plants a change there that
keeps node names and shapes and changes the graph's output; a no-op is told apart; a planted bug is detected on
the eager target and localized to the mutated node on jax."""

import pytest
import torch
import torch.nn.functional as F

from crossgraph.compiler.tolerance import TolerancePolicy
from crossgraph.graphs import capture
from crossgraph.passes.program import copy_graph
from helpers import bench_module

mutations = bench_module("mutations")


class Tiny(torch.nn.Module):
    """One site (at least) for every mutation kind."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 4)
        self.ln = torch.nn.LayerNorm(4)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.lin(x))                        # transposed_weight, gelu_tanh
        h = self.ln(h * 0.25)                          # wrong_constant, norm_eps
        s = torch.softmax(h, dim=-1)                   # wrong_reduce_dim (dim 1 has the same size)
        s = s.masked_fill(mask, 0.0)                   # dropped_mask
        return s[:, 1:3] - x[:, 0:2]                   # off_by_one_slice, swapped_operands


@pytest.fixture(scope="module")
def tiny():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 4, generator=g)
    mask = torch.rand(2, 4, 4, generator=g) > 0.5
    model = Tiny().eval()
    graph = capture(model, (x, mask))
    case = mutations.Case((x, mask), [model(x, mask).detach().numpy()], None)
    return model, graph, case


@pytest.mark.parametrize("kind", mutations.KINDS)
def test_every_kind_plants_a_change_at_a_kept_node(tiny, kind: str) -> None:
    model, graph, case = tiny
    base = copy_graph(graph)
    before = mutations.graph_outputs(base, case.inputs)
    sites = mutations.FINDERS[kind](base)
    assert sites, f"no {kind} site in the tiny graph"
    changed = []
    for site in sites:
        mutated = copy_graph(base)
        try:
            right = site.apply(mutated)
        except mutations.Unfit:
            continue
        names = {n.name for n in mutated.fx.nodes}
        assert site.node in names and right <= names  # the mutated node keeps its name
        after = mutations.graph_outputs(mutated, case.inputs)
        assert [a.shape for a in after] == [b.shape for b in before]
        same, effect = mutations.effect_of([before], [after])
        changed.append(not same and effect > 0)
        assert mutations.graph_outputs(base, case.inputs)[0].equal(before[0])  # the base graph is untouched
    assert any(changed), f"no {kind} site changed the output"


def test_no_op_is_told_apart(tiny) -> None:
    """Dropping an all-False mask changes nothing: the trial says no-op and judges nothing."""
    model, graph, case = tiny
    x = case.inputs[0]
    quiet = mutations.Case((x, torch.zeros(2, 4, 4, dtype=torch.bool)), case.reference, None)
    base = copy_graph(graph)
    site = mutations.FINDERS["dropped_mask"](base)[0]
    row = mutations.run_trial(model, quiet.inputs, "eager", base, site, [quiet],
                              [mutations.graph_outputs(base, quiet.inputs)], TolerancePolicy())
    assert row["status"] == "no-op"


def test_unfit_site_is_reported_not_raised(tiny) -> None:
    model, graph, case = tiny
    base = copy_graph(graph)
    bad = mutations.Site("wrong_reduce_dim", "softmax", "x", "x", mutations._reduce_apply(
        next(n.name for n in base.fx.nodes if "softmax" in str(n.target)), [0]))
    row = mutations.run_trial(model, case.inputs, "eager", base, bad, [case],
                              [mutations.graph_outputs(base, case.inputs)], TolerancePolicy())
    assert row["status"] in ("unfit", "detected")  # a dim of another size may still fit by broadcasting


def test_a_planted_bug_is_detected_and_localized(tiny) -> None:
    model, graph, case = tiny
    base = copy_graph(graph)
    outputs = [mutations.graph_outputs(base, case.inputs)]
    site = mutations.FINDERS["norm_eps"](base)[0]
    row = mutations.run_trial(model, case.inputs, "eager", base, site, [case], outputs, TolerancePolicy())
    assert row["status"] == "detected" and row["localized_right"] is None  # eager has no intermediates
    row = mutations.run_trial(model, case.inputs, "jax", base, site, [case], outputs, TolerancePolicy())
    assert row["status"] == "detected", row
    assert row["localizer_raised"] is False and row["localized_right"], row


def test_summary_and_markdown(tiny) -> None:
    rows = [{"model": "m", "kind": "norm_eps", "site": "n", "op": "o", "change": "c", "target": "jax",
             "status": "detected", "detected": True, "localized_right": False, "localized_node": "other",
             "localizer_raised": False, "localizer_message": "", "effect": 0.1},
            {"model": "m", "kind": "gelu_tanh", "site": "g", "op": "o", "change": "c", "target": "jax",
             "status": "no-op", "detected": None, "localized_right": None, "localized_node": None,
             "localizer_raised": None, "localizer_message": None, "effect": 0.0}]
    models = [{"model": "m", "trials": rows, "false_alarms": {"jax": {"false_alarms": 0, "examples": 20,
                                                                       "failing": []}}}]
    summary = mutations.summarize(models)
    assert summary["by_target"]["jax"]["total"] == 1 and summary["by_target"]["jax"]["no_op"] == 1
    assert summary["false_alarms"]["jax"] == {"false_alarms": 0, "examples": 20, "models": 1}
    text = mutations.markdown({"summary": summary, "models": models, "date": "d", "seconds": 60, "command": "c",
                               "machine": {"cpu": "cpu", "logical_cpus": 2, "libraries": {}},
                               "options": {"models": ["m"], "examples": 4, "seed": 0, "fa_examples": 20,
                                           "max_sites": 2, "inductor_sites": 1, "inductor_models": [],
                                           "inductor_kinds": []}})
    assert "| jax | 1/1 (100%) | 1/1 (100%) | 0/1 (0%) |" in text and "blamed other" in text

"""When parity fails, check says where: a broken lowering and a broken pass, planted here (never in the
product), are localized to their node and bisected to their pass, on real runtimes."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import pytest
import torch

from crossgraph.compiler import check
from crossgraph.compiler.cli import main
from crossgraph.compiler.jaxlower import registry as jax_table
from crossgraph.graphs import Graph
from crossgraph.graphs.dialect import OPS
from crossgraph.models import gpt2
from crossgraph.passes import registry as pass_registry

aten = torch.ops.aten
REPO = Path(__file__).resolve().parents[2]
PIPELINE = ("noop_removal", "cse", "planted_residual_sub", "constant_folding", "dead_code")


def _residual_sub(graph: Graph) -> Graph:
    """A wrong pass: the last residual add becomes a subtraction (shapes and dtypes unchanged)."""
    last = [n for n in graph.fx.nodes if n.target == aten.add.Tensor and all(
        isinstance(a, torch.fx.Node) for a in n.args)][-1]
    last.target = aten.sub.Tensor
    graph.exported.graph_module.recompile()
    return graph


@pytest.fixture
def planted_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(pass_registry._PASSES, "planted_residual_sub",
                        pass_registry.Pass("planted_residual_sub", "test-only: breaks a residual add", _residual_sub))


@pytest.fixture
def broken_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    """The JAX translation of crossgraph::attention with its scale doubled."""
    right = jax_table.lookup(OPS["attention"])

    def wrong(q, k, v, mask, causal, scale):  # type: ignore[no-untyped-def]
        return right.fn(q, k, v, mask, causal, 2 * scale)

    monkeypatch.setitem(jax_table._TABLE, OPS["attention"], jax_table.Translation(wrong))


def test_bisection_names_the_pass_that_breaks_parity(planted_pass: None) -> None:
    model, inputs = gpt2.tiny()
    result = check(model, inputs, ["jax"], passes=PIPELINE, bisect=True).targets["jax"]
    assert result.status == "fail"
    assert result.bisect["first_bad_pass"] == "planted_residual_sub" and result.bisect["index"] == 2
    assert result.bisect["tried"][0] == "pass" and result.bisect["tried"][len(PIPELINE)] == "fail"
    # The lowering agrees with the (wrong) graph it was given: no node diverges, the pass is to blame.
    assert result.first_divergent_node is None


def test_a_pipeline_that_keeps_parity_bisects_to_nothing() -> None:
    model, inputs = gpt2.tiny()
    result = check(model, inputs, ["jax"], passes=PIPELINE[:2], bisect=True).targets["jax"]
    assert result.status == "pass" and result.bisect is None


def test_broken_dialect_lowering_is_localized_bisected_and_reduced_from_the_cli(
        broken_attention: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without passes the graph has no crossgraph.attention, so JAX passes; fuse_attention introduces it. check
    names that pass and the attention node the model's attention code became; reduce writes a script that
    reproduces the failure from that one node."""
    spec = f"{REPO / 'models' / 'gpt2.py'}:tiny"
    report, markdown, repro = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "repro.py"
    assert main(["check", spec, "--targets", "jax", "--bisect-passes", "--json", str(report),
                 "--markdown", str(markdown)]) == 1
    result = json.loads(report.read_text())["targets"]["jax"]
    assert result["status"] == "fail" and result["bisect"]["first_bad_pass"] == "fuse_attention"
    node = result["first_divergent_node"]
    assert node["op"] == str(OPS["attention"]) and node["inputs_ok"]
    assert node["provenance"]["file"].endswith("gpt2.py")
    md = markdown.read_text().replace("\\_", "_")  # Markdown escapes underscores
    assert "first divergent node" in md and node["node"] in md and "'fuse_attention'" in md

    assert main(["reduce", spec, "--target", "jax", "-o", str(repro)]) == 1
    assert "crossgraph.attention" in repro.read_text()
    assert "1 of" in capsys.readouterr().out  # one op left
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(repro), run_name="__main__")
    assert done.value.code == 1  # the failure reproduces while the bug is planted

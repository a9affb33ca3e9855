"""PassManager: records per pass, the input graph left alone, weights shared, dumps, and failures that name
the pass that broke verification or parity."""

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from crossgraph.graphs import Annotation, Graph
from crossgraph.graphs import annotations
from crossgraph.passes import CLEANUP, PassError, PassManager, PassRun

aten = torch.ops.aten


@pytest.fixture(scope="module")
def cleanup_run(gpt2_tiny: tuple[Graph, tuple[torch.Tensor, ...]],
                tmp_path_factory: pytest.TempPathFactory) -> tuple[PassRun, Path]:
    graph, inputs = gpt2_tiny
    dump = tmp_path_factory.mktemp("dump")
    return PassManager(CLEANUP, check_parity=True, sample_inputs=inputs, dump_dir=dump).run(graph), dump


def _first(graph: Graph, target: Any) -> torch.fx.Node:
    return next(n for n in graph.fx.nodes if n.target == target)


def test_records_time_node_counts_and_change_per_pass(gpt2_tiny, cleanup_run) -> None:
    graph, _ = gpt2_tiny
    run, _ = cleanup_run
    assert [r.name for r in run.records] == list(CLEANUP)
    assert all(r.seconds > 0 and r.verify_seconds > 0 and r.changed for r in run.records)
    assert run.records[0].nodes_before == len(graph.fx.nodes)
    assert all(a.nodes_after == b.nodes_before for a, b in zip(run.records, run.records[1:]))
    assert run.records[-1].nodes_after == len(run.graph.fx.nodes) < len(graph.fx.nodes)
    assert any(r.nodes_after < r.nodes_before for r in run.records)


def test_a_pass_with_nothing_left_to_do_records_no_change(cleanup_run) -> None:
    run, _ = cleanup_run
    again = PassManager(",".join(CLEANUP)).run(run.graph)
    assert [(r.changed, r.nodes_before == r.nodes_after) for r in again.records] == [(False, True)] * len(CLEANUP)
    assert again.graph.format() == run.graph.format()


def test_input_graph_is_not_mutated_and_weights_are_shared(gpt2_tiny) -> None:
    graph, inputs = gpt2_tiny
    text, signature = graph.format(), repr(graph.exported.graph_signature)
    state, meta = dict(graph.exported.state_dict), {n.name: dict(n.meta) for n in graph.fx.nodes}
    out = PassManager(CLEANUP).run(graph).graph
    assert graph.format() == text and repr(graph.exported.graph_signature) == signature
    assert graph.exported.state_dict == state
    assert {n.name: dict(n.meta) for n in graph.fx.nodes}.keys() == meta.keys()
    assert all(n.meta.get("val") is meta[n.name].get("val") for n in graph.fx.nodes)
    kept = out.exported.state_dict
    assert kept and all(kept[k] is state[k] for k in kept)
    assert out.exported.graph_module is not graph.exported.graph_module
    torch.testing.assert_close(graph(*inputs)[0], out(*inputs)[0])


def test_dumps_the_graph_text_after_each_pass(cleanup_run) -> None:
    run, dump = cleanup_run
    expected = ["00-input.txt"] + [f"{i:02d}-{name}.txt" for i, name in enumerate(CLEANUP, start=1)]
    assert sorted(p.name for p in dump.iterdir()) == expected
    assert (dump / expected[-1]).read_text() == run.graph.format() + "\n"
    assert (dump / expected[1]).read_text() != (dump / expected[0]).read_text()


def bad_meta(graph: Graph) -> Graph:
    """Stores a wrong shape for the softmax."""
    node = _first(graph, aten._softmax.default)
    node.meta["val"] = node.meta["val"][..., :1]
    return graph


def test_wrong_meta_fails_verification_naming_the_pass_and_node(gpt2_tiny, tmp_path: Path) -> None:
    graph, _ = gpt2_tiny
    with pytest.raises(PassError) as info:
        PassManager(["cse", bad_meta, "dead_code"], dump_dir=tmp_path).run(graph)
    text = str(info.value)
    assert info.value.pass_name == "bad_meta" and text.startswith("pass 'bad_meta'")
    assert "_softmax" in text and "meta['val']" in text and "[2, 4, 8, 1]" in text and "[2, 4, 8, 8]" in text
    assert (tmp_path / "02-bad_meta.txt").exists() and not (tmp_path / "03-dead_code.txt").exists()


def reshape_logits(graph: Graph) -> Graph:
    """Changes the last view's shape argument but not its meta (the value object stays the same)."""
    last = graph.fx.output_node().args[0][0]
    last.args = (last.args[0], [16, 128])
    return graph


def test_changed_arguments_are_rederived_even_when_meta_is_untouched(gpt2_tiny) -> None:
    graph, _ = gpt2_tiny
    with pytest.raises(PassError, match=r"pass 'reshape_logits' left node view_37 = aten.view.default\(...\) whose "
                                        r"meta\['val'\] says float32\[2, 8, 128\] but which computes "
                                        r"float32\[16, 128\]"):
        PassManager(["noop_removal", "cse", reshape_logits]).run(graph)


def add_to_sub(graph: Graph) -> Graph:
    """Turns the first add into a subtraction: shapes stay right, values do not."""
    _first(graph, aten.add.Tensor).target = aten.sub.Tensor
    return graph


def test_changed_values_fail_parity_naming_the_pass_and_output(gpt2_tiny) -> None:
    graph, inputs = gpt2_tiny
    PassManager([add_to_sub]).run(graph)  # verification alone cannot see it
    with pytest.raises(PassError, match=r"pass 'add_to_sub' changed output 'output': \d+ of 2048 values beyond"):
        PassManager(["noop_removal", add_to_sub], check_parity=True, sample_inputs=inputs).run(graph)


def gelu_to_log(graph: Graph) -> Graph:
    """Turns the first gelu into a log, NaN on negative inputs."""
    node = _first(graph, aten.gelu.default)
    node.target, node.kwargs = aten.log.default, {}
    return graph


def test_nan_where_the_reference_is_finite_fails_parity(gpt2_tiny) -> None:
    graph, _ = gpt2_tiny
    with pytest.raises(PassError, match="pass 'gelu_to_log' .*non-finite values where the reference is finite"):
        PassManager([gelu_to_log], check_parity=True).run(graph)  # the capture's example inputs


def drop_bias_placeholder(graph: Graph) -> Graph:
    """Removes a parameter's placeholder but leaves its input spec behind."""
    bias = next(n for n in graph.fx.nodes if n.name == "p_ln_f_bias")
    bias.replace_all_uses_with(next(n for n in graph.fx.nodes if n.name == "p_ln_f_weight"))
    graph.fx.erase_node(bias)
    return graph


def test_stale_signature_fails_verification(gpt2_tiny) -> None:
    graph, _ = gpt2_tiny
    with pytest.raises(PassError, match="(?s)pass 'drop_bias_placeholder' left an ExportedProgram that fails torch's "
                                        "verifier.*p_ln_f_bias"):
        PassManager([drop_bias_placeholder]).run(graph)


@dataclasses.dataclass(frozen=True)
class Points(Annotation):
    """A test-only annotation naming another node."""

    kind = "test-points"
    to: Any = None


def dangling_annotation(graph: Graph) -> Graph:
    """Annotates the softmax with a node, then erases that node."""
    softmax = _first(graph, aten._softmax.default)
    with graph.fx.inserting_after(softmax):
        doomed = graph.fx.call_function(aten.neg.default, (softmax,))
    doomed.meta["val"] = softmax.meta["val"]
    annotations.put(softmax, Points(doomed))
    graph.fx.erase_node(doomed)
    return graph


def test_annotation_naming_a_removed_node_fails_verification(gpt2_tiny) -> None:
    graph, _ = gpt2_tiny
    with pytest.raises(PassError, match="pass 'dangling_annotation' left a test-points annotation on node _softmax "
                                        "that refers to node neg"):
        PassManager([dangling_annotation]).run(graph)


def test_a_pass_that_raises_is_named(gpt2_tiny) -> None:
    def explode(graph: Graph) -> Graph:
        raise RuntimeError("boom")

    with pytest.raises(PassError, match="pass 'explode' raised RuntimeError: boom"):
        PassManager(["cse", explode]).run(gpt2_tiny[0])

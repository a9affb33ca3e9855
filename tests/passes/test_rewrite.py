"""Pattern rewriting: plain torch functions as pattern and replacement, matched on captured core-ATen graphs."""

import math

import torch

from crossgraph.graphs import Graph
from crossgraph.passes import PassManager, replace_pattern, trace_pattern
from crossgraph.passes.program import copy_graph

aten = torch.ops.aten
SCALE = 1.0 / math.sqrt(8)  # GPT2Config.tiny(): head size 8


def test_patterns_trace_to_the_core_aten_that_capture_produces() -> None:
    graph = trace_pattern(lambda x: torch.nn.functional.linear(x, x).softmax(-1), [torch.ones(2, 2)])
    targets = {n.target for n in graph.nodes if n.op == "call_function"}
    assert targets == {aten.permute.default, aten.mm.default, aten._softmax.default}


def test_x_times_two_becomes_x_plus_x(capture_fn) -> None:
    x = torch.randn(3, 5)
    graph = capture_fn(lambda m, x: torch.relu(x * 2) * 2 + x * 3, x)
    double = next(n for n in graph.fx.nodes if n.target == aten.mul.Tensor and n.args[1] == 2)

    def rewrite(g: Graph) -> Graph:
        assert replace_pattern(g, lambda x: x * 2, lambda x: x + x, [torch.ones(2)]) == 2
        return g

    out = PassManager([rewrite]).run(graph).graph  # verified: the new nodes carry valid meta["val"]
    assert out.op_histogram()["aten.mul.Tensor"] == 1 and out.op_histogram()["aten.add.Tensor"] == 3
    assert graph.op_histogram()["aten.mul.Tensor"] == 3  # the input graph is untouched
    torch.testing.assert_close(out(x)[0], graph(x)[0])
    first_add = next(n for n in out.fx.nodes if n.target == aten.add.Tensor)
    assert out.provenance(first_add) == graph.provenance(double) is not None
    for key in ("stack_trace", "nn_module_stack"):  # the model's, not those of tracing the replacement
        assert first_add.meta[key] == double.meta[key]


def test_attention_scale_rewrite_on_captured_gpt2(gpt2_tiny) -> None:
    graph, inputs = gpt2_tiny
    scaled = [n for n in graph.fx.nodes if n.target == aten.mul.Tensor and n.args[1] == SCALE]

    def scale_by_division(g: Graph) -> Graph:
        assert replace_pattern(g, lambda s: s * SCALE, lambda s: s / math.sqrt(8), [torch.ones(2, 2)]) == 2
        return g

    out = PassManager([scale_by_division], check_parity=True).run(graph).graph
    divs = [n for n in out.fx.nodes if n.target == aten.div.Tensor]
    assert len(scaled) == len(divs) == 2
    assert [out.provenance(n) for n in divs] == [graph.provenance(n) for n in scaled]
    assert out.provenance(divs[0]).function == "attention"
    torch.testing.assert_close(out(*inputs)[0], graph(*inputs)[0])


def test_filters_and_literals_decide_what_matches(capture_fn) -> None:
    graph = capture_fn(lambda m, x: x * 2 + x * 3, torch.randn(4))

    def count(**options) -> int:
        g = copy_graph(graph)  # replace_pattern rewrites in place
        return replace_pattern(g, lambda x: x * 2, lambda x: x + x, [torch.ones(2)], **options)

    assert count() == 1
    assert count(ignore_literals=True) == 2  # x * 3 matches too: literals are not compared
    assert count(match_filters=[lambda match, g, pattern: False]) == 0

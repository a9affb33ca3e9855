"""TensorRT: optimization profiles from the graph's dynamic ranges (CPU), and the real lowering (GPU only)."""

import importlib.util

import pytest
import torch

from crossgraph.compiler import check
from crossgraph.compiler.tensorrt import MAX_DYNAMIC, profiles, unavailable
from crossgraph.graphs import capture
from crossgraph.models import gpt2


def test_profiles_follow_dynamic_ranges() -> None:
    model, inputs = gpt2.tiny()
    graph = capture(model, inputs, gpt2.dynamic_shapes(model.config))
    assert profiles(graph) == [([1, 1], [2, 8], [1024, 64], torch.int64)]
    unbounded = capture(model, inputs, ({0: torch.export.Dim("batch")},))
    assert profiles(unbounded) == [([1, 8], [2, 8], [MAX_DYNAMIC, 8], torch.int64)]


def test_reports_skipped_with_the_reason_when_absent() -> None:
    if unavailable() is None:
        pytest.skip("TensorRT is available here: the GPU test covers it")
    result = check(*gpt2.tiny(), ["tensorrt"]).targets["tensorrt"]
    assert result.status == "skipped" and result.error == unavailable()


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("torch_tensorrt") is None, reason="torch_tensorrt not installed")
def test_gpt2_tiny_on_tensorrt() -> None:
    report = check(*gpt2.tiny(), ["tensorrt"])
    assert report.targets["tensorrt"].status == "pass", report.targets["tensorrt"].error

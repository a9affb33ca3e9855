"""check() end to end on real models: eager graph and Flax reference against the model as written."""

import math

import pytest

from crossgraph.compiler import Tolerance, TolerancePolicy, check
from crossgraph.graphs import InputError, capture
from crossgraph.models import gpt2, mlp
from fixtures import specs


def test_gpt2_tiny_passes_on_eager_and_flax() -> None:
    model, inputs = gpt2.tiny()
    report = check(model, inputs, ["eager", "flax"])
    assert report.exit_code == 0
    for name in ("eager", "flax"):
        result = report.targets[name]
        assert result.status == "pass" and result.max_abs_err <= result.atol and result.seconds > 0


def test_prebuilt_graph_is_checked_as_given() -> None:
    model, inputs = mlp.tiny()
    graph = capture(model, inputs)
    report = check(model, inputs, "eager", graph=graph)
    assert report.targets["eager"].status == "pass" and report.spec == "mlp"


def test_tolerance_override_can_fail_a_target() -> None:
    """A tolerance of zero against an independent implementation fails: the policy really decides."""
    model, inputs = gpt2.tiny()
    strict = TolerancePolicy(override=Tolerance(0.0, 0.0))
    report = check(model, inputs, ["flax"], policy=strict)
    assert report.targets["flax"].status == "fail" and report.exit_code == 1


def test_broken_reference_fails_and_nan_fails() -> None:
    assert check(*specs.broken_reference(), ["flax"]).targets["flax"].status == "fail"
    nan = check(*specs.makes_nan(), ["eager"]).targets["eager"]
    assert nan.status == "fail" and "NaN" in nan.error and math.isnan(nan.max_abs_err)
    assert nan.to_json()["max_abs_err"] is None


def test_unknown_target_is_input_error() -> None:
    with pytest.raises(InputError, match="unknown target"):
        check(*mlp.tiny(), ["eager", "gpu9000"])


def test_table_lists_every_target_and_why_one_was_skipped() -> None:
    report = check(*specs.two_outputs(), ["eager", "tensorrt", "flax"])
    table = report.table()
    for name in ("eager", "tensorrt", "flax"):
        assert name in table
    assert "flax: the model has no Flax reference" in table

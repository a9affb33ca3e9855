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


def test_examples_run_drawn_inputs_and_report_every_case() -> None:
    """--examples N: the example inputs, then N-1 drawn ones; each is its own case with its own statistics."""
    from crossgraph.compiler.export import auto_dynamic_shapes

    model, inputs = gpt2.tiny()
    report = check(model, inputs, ["eager", "flax"], examples=4, seed=1,
                   dynamic_shapes=auto_dynamic_shapes(inputs))
    flax = report.targets["flax"]
    assert {t: r.status for t, r in report.targets.items()} == {"eager": "pass", "flax": "pass"}
    assert [c.example for c in flax.cases] == [0, 1, 2, 3]
    assert all(c.status == "pass" and c.worst is not None for c in flax.cases)
    assert flax.max_abs_err == max(c.max_abs_err for c in flax.cases)
    assert report.to_json()["targets"]["flax"]["examples"] == 4 and report.seed == 1


def test_a_failing_drawn_example_fails_the_target_and_is_named() -> None:
    """A model that is fine on its example input but makes NaN on drawn ones (negative inputs to log)."""
    model, inputs = specs.makes_nan()
    positive = (inputs[0].abs() + 1,)
    result = check(model, positive, ["eager"], examples=3).targets["eager"]
    assert result.cases[0].status == "pass" and any(c.status == "fail" for c in result.cases[1:])
    assert result.status == "fail" and result.error.startswith("example ") and "NaN" in result.error


def test_examples_must_be_positive() -> None:
    with pytest.raises(InputError, match="examples"):
        check(*mlp.tiny(), ["eager"], examples=0)


def test_a_model_that_raises_on_drawn_shapes_is_bad_input_naming_them() -> None:
    from crossgraph.compiler.export import auto_dynamic_shapes

    model, inputs = specs.rejects_odd_widths()
    with pytest.raises(InputError, match=r"the model raised on drawn example \d+ \(input shapes .*odd widths"):
        check(model, inputs, ["eager"], examples=8, dynamic_shapes=auto_dynamic_shapes(inputs))

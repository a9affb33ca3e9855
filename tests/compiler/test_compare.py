"""Comparison rules: allclose semantics, NaN/Inf never pass, shapes and dtypes must match."""

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from crossgraph.compiler import Tolerance, TolerancePolicy, compare_array, compare_outputs

TOL = Tolerance(1e-5, 1e-4)
finite = hnp.arrays(np.float32, hnp.array_shapes(max_dims=3, max_side=5),
                    elements=st.floats(-1e3, 1e3, width=32))


@given(finite)
def test_identical_passes_with_zero_error(a: np.ndarray) -> None:
    v = compare_array("y", a, a.copy(), TOL)
    assert v.ok and v.max_abs_err == 0.0 and v.max_rel_err == 0.0


@given(finite, st.floats(0.0, 0.9))
def test_within_tolerance_passes_and_outside_fails(a: np.ndarray, frac: float) -> None:
    a = a.astype(np.float64)
    bound = TOL.atol + TOL.rtol * np.abs(a)
    assert compare_array("y", a, a + frac * bound, TOL).ok
    if a.size:
        assert not compare_array("y", a, a + 1.5 * bound, TOL).ok


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_candidate_fails_even_with_huge_tolerance(bad: float) -> None:
    ref = np.zeros(4, np.float32)
    cand = ref.copy()
    cand[2] = bad
    v = compare_array("logits", ref, cand, Tolerance(1e30, 1e30))
    assert not v.ok and "where the reference is finite" in v.message and "'logits'" in v.message


def test_nonfinite_reference_fails() -> None:
    ref = np.array([1.0, np.nan], np.float32)
    v = compare_array("y", ref, ref.copy(), TOL)
    assert not v.ok and "1 NaN" in v.message


def test_shape_and_dtype_mismatch_fail() -> None:
    assert "shape" in compare_array("y", np.zeros((2, 3)), np.zeros((3, 2)), TOL).message
    assert "dtype" in compare_array("y", np.zeros(3, np.float32), np.zeros(3, np.int32), TOL).message


def test_integers_compare_across_widths_and_exactly() -> None:
    policy = TolerancePolicy()
    tol = policy.for_output("flax", np.int64)
    assert tol == Tolerance(0.0, 0.0)
    assert compare_array("ids", np.arange(5, dtype=np.int64), np.arange(5, dtype=np.int32), tol).ok
    assert not compare_array("ids", np.arange(5), np.arange(5) + 1, tol).ok


def test_relative_error_ignores_near_zero_reference() -> None:
    v = compare_array("y", np.array([0.0, 2.0]), np.array([1e-6, 2.0002]), Tolerance(1e-5, 1e-3))
    assert v.ok and v.max_rel_err == pytest.approx(1e-4) and v.max_abs_err == pytest.approx(2e-4)


def test_outputs_report_first_failure_and_count_mismatch() -> None:
    a, b = np.ones(3), np.ones(2)
    v = compare_outputs(["a", "b"], [a, b], [a, b + 1], [TOL, TOL])
    assert not v.ok and v.message.startswith("output 'b'") and v.max_abs_err == 1.0
    assert "1 outputs, the reference has 2" in compare_outputs(["a", "b"], [a, b], [a], [TOL, TOL]).message


def test_policy_precedence() -> None:
    policy = TolerancePolicy()
    assert policy.for_output("eager", np.float32) == Tolerance(1e-5, 1e-4)
    assert policy.for_output("flax", np.float32) == Tolerance(1e-4, 1e-3)
    assert policy.for_output("flax", np.float16) == Tolerance(1e-3, 1e-2)
    strict = policy.with_override(1e-7, None)
    assert strict.for_output("flax", np.float32) == Tolerance(1e-7, 1e-4)
    with pytest.raises(ValueError):
        policy.with_override(-1.0, None)

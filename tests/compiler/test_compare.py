"""Comparison rules: allclose semantics, NaN/Inf never pass, shapes and dtypes must match; error statistics
and the worst element."""

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from crossgraph.compiler import Comparison, Tolerance, TolerancePolicy, compare_array, compare_outputs

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


pairs = hnp.array_shapes(max_dims=3, max_side=5).flatmap(lambda shape: st.tuples(
    hnp.arrays(np.float32, shape, elements=st.floats(-1e3, 1e3, width=32)),
    hnp.arrays(np.float32, shape, elements=st.floats(-0.0009765625, 0.0009765625, width=32))))


@given(pairs)
def test_statistics_bound_each_other_and_worst_decides_the_verdict(pair: tuple[np.ndarray, np.ndarray]) -> None:
    """The worst element is the one furthest past (or closest to) its allowance: the verdict is its verdict."""
    ref, noise = (a.astype(np.float64) for a in pair)
    cand = ref + noise
    v = compare_array("y", ref, cand, TOL)
    assert 0.0 <= v.mean_abs_err <= v.max_abs_err and 0.0 <= v.p99_abs_err <= v.max_abs_err
    assert v.ok == (v.worst["abs_err"] <= v.worst["allowed"])
    at = tuple(v.worst["index"])
    assert v.worst["abs_err"] == pytest.approx(abs(cand[at] - ref[at]))


def test_empty_output_passes_with_no_worst_element() -> None:
    v = compare_array("y", np.zeros((0, 3)), np.zeros((0, 3)), TOL)
    assert v.ok and v.worst is None and v.mean_abs_err == 0.0 and v.p99_abs_err == 0.0


def test_mean_and_p99_of_absolute_errors() -> None:
    ref = np.zeros(101)
    v = compare_array("y", ref, np.arange(101, dtype=np.float64), Tolerance(1e3, 0.0))
    assert v.ok and v.mean_abs_err == 50.0 and v.p99_abs_err == 99.0 and v.max_abs_err == 100.0


def test_worst_is_relative_to_the_allowance_and_reported_on_a_pass() -> None:
    """Element 0 has the larger absolute error, but element 1 uses more of its allowance atol + rtol*|r|."""
    v = compare_array("y", np.array([[100.0, 1.0]]), np.array([[100.001, 1.0005]]), Tolerance(1e-5, 1e-2))
    assert v.ok and v.max_abs_err == pytest.approx(1e-3)
    assert v.worst["output"] == "y" and v.worst["index"] == [0, 1]
    assert v.worst["candidate"] == 1.0005 and v.worst["reference"] == 1.0
    assert v.worst["abs_err"] == pytest.approx(5e-4) and v.worst["allowed"] == pytest.approx(1e-5 + 1e-2)


def test_failure_worst_matches_the_message() -> None:
    v = compare_array("y", np.zeros((2, 3)), np.array([[0, 0, 0], [0, 2e-3, 1e-3]]), TOL)
    assert not v.ok and v.worst["index"] == [1, 1] and "worst at (1, 1)" in v.message


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_worst_points_at_the_first_nonfinite_candidate_element(bad: float) -> None:
    ref = np.ones((2, 3), np.float32)
    cand = ref.copy()
    cand[0, 0] = 5.0  # a larger finite error does not hide the NaN/Inf
    cand[1, 0] = cand[1, 2] = bad
    v = compare_array("y", ref, cand, TOL)
    assert not v.ok and v.worst["index"] == [1, 0] and v.worst["reference"] == 1.0
    assert not np.isfinite(v.worst["candidate"]) and np.isnan(v.mean_abs_err) and np.isnan(v.p99_abs_err)


def test_integer_worst_values_stay_integers() -> None:
    v = compare_array("ids", np.array([1, 2, 3]), np.array([1, 2, 5]), Tolerance(0.0, 0.0))
    assert not v.ok and v.worst["candidate"] == 5 and isinstance(v.worst["candidate"], int)


def test_outputs_mean_is_over_all_elements_and_p99_is_the_maximum() -> None:
    refs = [np.zeros(1), np.zeros(3)]
    v = compare_outputs(["a", "b"], refs, [np.array([4.0]), np.zeros(3)], [Tolerance(10.0, 0.0)] * 2)
    assert v.ok and v.mean_abs_err == 1.0 and v.p99_abs_err == pytest.approx(4.0)


def test_outputs_worst_is_the_failing_output_or_the_one_nearest_its_tolerance() -> None:
    big, small = Tolerance(1.0, 0.0), Tolerance(1e-3, 0.0)
    refs = [np.zeros(2), np.zeros(2)]
    passing = compare_outputs(["a", "b"], refs, [np.array([0.5, 0]), np.array([0, 9e-4])], [big, small])
    assert passing.ok and passing.worst["output"] == "b" and passing.worst["index"] == [1]
    failing = compare_outputs(["a", "b"], refs, [np.array([0.5, 0]), np.array([0, 2e-3])], [small, big])
    assert not failing.ok and failing.worst["output"] == "a" and failing.atol == small.atol


def test_comparison_keeps_its_old_constructor() -> None:
    v = Comparison(True, 0.0, 0.0, 1e-5, 1e-4)
    assert v.worst is None and np.isnan(v.mean_abs_err) and np.isnan(v.p99_abs_err)
    assert compare_outputs([], [], [], []).mean_abs_err == 0.0

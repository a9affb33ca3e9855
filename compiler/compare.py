"""Compare candidate outputs with reference outputs under a tolerance; the verdict says why it failed, how large
the errors were, and where the element closest to (or furthest past) its tolerance is."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from crossgraph.compiler.tolerance import Tolerance

NAN = float("nan")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Verdict over all outputs; `message` names the first failure.

    max_abs_err, max_rel_err and p99_abs_err are maxima over outputs (p99_abs_err: each output's 99th percentile
    of |c - r|), mean_abs_err is the mean of |c - r| over every element of every output; all are NaN when an
    output could not be compared (shape, dtype, NaN/Inf). `worst` is the element that used most of its allowance
    atol + rtol * |r| (see `compare_array`), on a pass too, so margins show; None when there is no element.
    """

    ok: bool
    max_abs_err: float
    max_rel_err: float
    atol: float
    rtol: float
    message: str | None = None
    mean_abs_err: float = NAN
    p99_abs_err: float = NAN
    worst: dict[str, Any] | None = None


def compare_array(name: str, ref: np.ndarray, cand: np.ndarray, tol: Tolerance) -> Comparison:
    """One output. max_rel_err is max |c - r| / |r| over elements where |r| > atol (0 when there are none).
    `worst` = {"output", "index", "candidate", "reference", "abs_err", "allowed"} for the element with the
    largest |c - r| - rtol * |r|, or for the first NaN/Inf (in the reference first, else in the candidate)."""
    def fail(msg: str, abs_err: float = NAN, rel_err: float = NAN, **stats: Any) -> Comparison:
        return Comparison(False, abs_err, rel_err, tol.atol, tol.rtol, f"output '{name}': {msg}", **stats)

    if ref.shape != cand.shape:
        return fail(f"shape {cand.shape} != reference shape {ref.shape}")
    if ref.dtype.kind != cand.dtype.kind and not {ref.dtype.kind, cand.dtype.kind} <= {"i", "u"}:
        return fail(f"dtype {cand.dtype} != reference dtype {ref.dtype}")
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    for a, what in ((r, "the reference holds {}, so nothing can be checked against it"),
                    (c, "holds {} where the reference is finite")):
        finite = np.isfinite(a)
        if not finite.all():
            first = np.unravel_index(int(np.argmin(finite.ravel())), a.shape)
            return fail(what.format(_nonfinite(a)), worst=_element(name, first, ref, cand, tol))
    diff = np.abs(c - r)
    if not diff.size:
        return Comparison(True, 0.0, 0.0, tol.atol, tol.rtol, mean_abs_err=0.0, p99_abs_err=0.0)
    abs_err = float(diff.max())
    big = np.abs(r) > tol.atol
    rel_err = float((diff[big] / np.abs(r[big])).max()) if big.any() else 0.0
    stats = {"mean_abs_err": float(diff.mean()), "p99_abs_err": float(np.percentile(diff, 99))}
    idx = np.unravel_index(int(np.argmax(diff - tol.rtol * np.abs(r))), r.shape)
    worst = _element(name, idx, ref, cand, tol)
    bad = diff > tol.atol + tol.rtol * np.abs(r)
    if bad.any():
        return fail(f"{int(bad.sum())} of {bad.size} elements out of tolerance; worst at {tuple(worst['index'])}: "
                    f"{float(c[idx]):.9g} vs reference {float(r[idx]):.9g}", abs_err, rel_err, worst=worst,
                    **stats)
    return Comparison(True, abs_err, rel_err, tol.atol, tol.rtol, worst=worst, **stats)


def compare_outputs(names: Sequence[str], refs: Sequence[np.ndarray], cands: Sequence[np.ndarray],
                    tols: Sequence[Tolerance]) -> Comparison:
    """All outputs; a different number of outputs is a failure in itself. The tolerance and `worst` reported
    are the first failing output's; on a pass, `worst` is the element using the largest fraction of its
    allowance across outputs, and the tolerance the first output's."""
    if len(refs) != len(cands):
        t = tols[0] if tols else Tolerance(0.0, 0.0)
        return Comparison(False, NAN, NAN, t.atol, t.rtol, f"{len(cands)} outputs, the reference has {len(refs)}")
    verdicts = [compare_array(n, r, c, t) for n, r, c, t in zip(names, refs, cands, tols)]
    if not verdicts:
        return Comparison(True, 0.0, 0.0, 0.0, 0.0, mean_abs_err=0.0, p99_abs_err=0.0)
    failed = next((v for v in verdicts if not v.ok), None)
    shown = failed or verdicts[0]
    sizes = [r.size for r in refs]
    mean = sum(v.mean_abs_err * n for v, n in zip(verdicts, sizes) if n) / sum(sizes) if sum(sizes) else 0.0
    worst = failed.worst if failed else max((v.worst for v in verdicts if v.worst), key=_used, default=None)
    return Comparison(failed is None, float(np.max([v.max_abs_err for v in verdicts])),
                      float(np.max([v.max_rel_err for v in verdicts])), shown.atol, shown.rtol,
                      failed.message if failed else None, mean_abs_err=float(mean),
                      p99_abs_err=float(np.max([v.p99_abs_err for v in verdicts])), worst=worst)


def _element(name: str, idx: tuple[Any, ...], ref: np.ndarray, cand: np.ndarray, tol: Tolerance) -> dict[str, Any]:
    """The `worst` record of one element: values as Python numbers (ints stay ints), its error and allowance."""
    r, c = _scalar(ref[idx]), _scalar(cand[idx])
    return {"output": name, "index": [int(i) for i in idx], "candidate": c, "reference": r,
            "abs_err": abs(float(c) - float(r)), "allowed": tol.atol + tol.rtol * abs(float(r))}


def _scalar(x: Any) -> int | float | bool:
    kind = np.asarray(x).dtype.kind
    return bool(x) if kind == "b" else int(x) if kind in "iu" else float(x)


def _used(worst: dict[str, Any]) -> float:
    """How much of its allowance an element uses: abs_err / allowed (inf past a zero allowance)."""
    if worst["abs_err"] == 0:
        return 0.0
    return worst["abs_err"] / worst["allowed"] if worst["allowed"] else float("inf")


def _nonfinite(a: np.ndarray) -> str:
    parts = [f"{n} {what}" for what, n in (("NaN", int(np.isnan(a).sum())), ("Inf", int(np.isinf(a).sum()))) if n]
    return " and ".join(parts)

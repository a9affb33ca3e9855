"""Compare candidate outputs with reference outputs under a tolerance; the verdict says why it failed."""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from crossgraph.compiler.tolerance import Tolerance


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Verdict over all outputs: errors are the maxima across outputs; `message` names the first failure."""

    ok: bool
    max_abs_err: float
    max_rel_err: float
    atol: float
    rtol: float
    message: str | None = None


def compare_array(name: str, ref: np.ndarray, cand: np.ndarray, tol: Tolerance) -> Comparison:
    """One output. max_rel_err is max |c - r| / |r| over elements where |r| > atol (0 when there are none)."""
    def fail(msg: str, abs_err: float = float("nan"), rel_err: float = float("nan")) -> Comparison:
        return Comparison(False, abs_err, rel_err, tol.atol, tol.rtol, f"output '{name}': {msg}")

    if ref.shape != cand.shape:
        return fail(f"shape {cand.shape} != reference shape {ref.shape}")
    if ref.dtype.kind != cand.dtype.kind and not {ref.dtype.kind, cand.dtype.kind} <= {"i", "u"}:
        return fail(f"dtype {cand.dtype} != reference dtype {ref.dtype}")
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    if not np.isfinite(r).all():
        return fail(f"the reference holds {_nonfinite(r)}, so nothing can be checked against it")
    if not np.isfinite(c).all():
        return fail(f"holds {_nonfinite(c)} where the reference is finite")
    diff = np.abs(c - r)
    abs_err = float(diff.max()) if diff.size else 0.0
    big = np.abs(r) > tol.atol
    rel_err = float((diff[big] / np.abs(r[big])).max()) if big.any() else 0.0
    bad = diff > tol.atol + tol.rtol * np.abs(r)
    if bad.any():
        idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(diff - tol.rtol * np.abs(r))), r.shape))
        return fail(f"{int(bad.sum())} of {bad.size} elements out of tolerance; worst at {idx}: "
                    f"{float(c[idx]):.7g} vs reference {float(r[idx]):.7g}", abs_err, rel_err)
    return Comparison(True, abs_err, rel_err, tol.atol, tol.rtol)


def compare_outputs(names: Sequence[str], refs: Sequence[np.ndarray], cands: Sequence[np.ndarray],
                    tols: Sequence[Tolerance]) -> Comparison:
    """All outputs; a different number of outputs is a failure in itself."""
    if len(refs) != len(cands):
        t = tols[0] if tols else Tolerance(0.0, 0.0)
        return Comparison(False, float("nan"), float("nan"), t.atol, t.rtol,
                          f"{len(cands)} outputs, the reference has {len(refs)}")
    verdicts = [compare_array(n, r, c, t) for n, r, c, t in zip(names, refs, cands, tols)]
    if not verdicts:
        return Comparison(True, 0.0, 0.0, 0.0, 0.0)
    failed = next((v for v in verdicts if not v.ok), None)
    shown = failed or verdicts[0]  # the tolerance reported is the failing output's, else the first output's
    return Comparison(failed is None, float(np.max([v.max_abs_err for v in verdicts])),
                      float(np.max([v.max_rel_err for v in verdicts])), shown.atol, shown.rtol,
                      failed.message if failed else None)


def _nonfinite(a: np.ndarray) -> str:
    parts = [f"{n} {what}" for what, n in (("NaN", int(np.isnan(a).sum())), ("Inf", int(np.isinf(a).sum()))) if n]
    return " and ".join(parts)

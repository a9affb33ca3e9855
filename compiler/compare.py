"""Compare candidate outputs with reference outputs under a tolerance; the verdict says why it failed, how large
the errors were, and where the element closest to (or furthest past) its tolerance is.

Two rules, and the verdict names the one that judged each output:
  * "tolerance": |c - r| <= atol + rtol * |r| against the float32 reference r (numpy.allclose's rule).
  * "float64-oracle", where a float64 run o of the same model is at hand (compiler.oracle) for a float32 output:
    |c - o| <= ORACLE_MULTIPLE * (E + ulp) + ULP, where E is eager float32's own largest error |r - o| in the
    element's block, ulp one float32 ulp of the block's largest |o| and ULP of the output's (see
    `oracle_allowance`). A runtime is
    judged by how far it is from the exact answer, against how far float32 itself is: large inputs,
    cancellation and long sums widen the allowance exactly where float32 is imprecise, and nowhere else; where
    float32 is precise, so must the target be (a tanh GELU for an erf one shows). Elements whose float64 value
    is not finite are judged by the "tolerance" rule.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

from crossgraph.compiler.tolerance import Tolerance

NAN = float("nan")

ORACLE_MULTIPLE = 8.0
"""How many times eager float32's own error against float64 a target may be off float64 (and the floor, in
float32 ulps of its block's largest value). Runtimes that sum in another order, fuse or vectorize differently
land within 1-3x of eager's error (docs/decisions/2026-12-08-float64-oracle.md)."""

ORACLE_BLOCK = 64
"""The fewest elements over which eager's error is pooled: an output's trailing dimensions, from the last,
until they hold at least this many (a row of logits, a row of pixels, or the whole of a small output). Pooling
over a block keeps an element where float32 happens to round exactly from demanding exactness of a target."""

_EPS32 = float(np.finfo(np.float32).eps)


def oracle_allowance(ref: np.ndarray, oracle: np.ndarray) -> np.ndarray:
    """Each element's allowed |candidate - oracle|: ORACLE_MULTIPLE * (the largest |reference - oracle| in its
    block + one float32 ulp of the largest |oracle| there), blocks as ORACLE_BLOCK says, plus one ulp of the
    output's largest |oracle| (a block that is exactly zero in float32 and float64 alike, a masked row, still
    allows a summation order's residue). Non-finite values pool as 0 (they are judged elsewhere)."""
    r, o = ref.astype(np.float64), oracle.astype(np.float64)
    finite = np.isfinite(r) & np.isfinite(o)
    own, size = np.where(finite, np.abs(r - o), 0.0), np.where(finite, np.abs(o), 0.0)
    floor = _EPS32 * float(size.max()) if size.size else 0.0
    return ORACLE_MULTIPLE * (_block_max(own) + _EPS32 * _block_max(size)) + floor


def _block_max(a: np.ndarray) -> np.ndarray:
    """Each element replaced by the largest value of its block (ORACLE_BLOCK trailing elements at least)."""
    lead = a.ndim  # a.shape[:lead] indexes the blocks; the dimensions after it make one block
    while lead > 0 and math.prod(a.shape[lead:]) < ORACLE_BLOCK:
        lead -= 1
    if not a.size or lead == a.ndim:
        return a
    pooled = a.reshape(*a.shape[:lead], -1).max(axis=-1)
    return np.broadcast_to(pooled.reshape(pooled.shape + (1,) * (a.ndim - lead)), a.shape)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """Verdict over all outputs; `message` names the first failure.

    max_abs_err, max_rel_err and p99_abs_err are maxima over outputs (p99_abs_err: each output's 99th percentile
    of |c - r|), mean_abs_err is the mean of |c - r| over every element of every output; all are NaN when an
    output could not be compared (shape, dtype, NaN/Inf). `worst` is the element that used most of its allowance
    (see `compare_array`), on a pass too, so margins show; None when there is no element. `rules` names the
    rule that judged each output; oracle_abs_err is max |c - o| and reference_oracle_abs_err max |r - o| over
    the outputs judged against float64 (NaN when none was).
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
    rules: dict[str, str] = dataclasses.field(default_factory=dict)
    oracle_abs_err: float = NAN
    reference_oracle_abs_err: float = NAN

    @property
    def rule(self) -> str | None:
        """See `combined_rule`."""
        return combined_rule(self.rules)


def combined_rule(rules: Mapping[str, str]) -> str | None:
    """The one rule that judged every output in `rules` (output -> rule), "mixed" when they differ, None when
    nothing was judged."""
    kinds = set(rules.values())
    return None if not kinds else kinds.pop() if len(kinds) == 1 else "mixed"


def compare_array(name: str, ref: np.ndarray, cand: np.ndarray, tol: Tolerance,
                  oracle: np.ndarray | None = None) -> Comparison:
    """One output, by the "float64-oracle" rule when `oracle` (the float64 run) is given for a float32
    reference of the same shape, else by the "tolerance" rule (see the module docstring). max_rel_err is
    max |c - r| / |r| over elements where |r| > atol (0 when there are none). `worst` = {"output", "index",
    "candidate", "reference", "abs_err", "allowed"} (and "oracle", "oracle_abs_err" under the oracle rule,
    where "allowed" bounds oracle_abs_err) for the element that used most of its allowance, or for the first
    NaN/Inf (in the reference first, else in the candidate)."""
    use_oracle = oracle is not None and ref.dtype == np.float32 and oracle.shape == ref.shape
    rule = {name: "float64-oracle" if use_oracle else "tolerance"}

    def fail(msg: str, abs_err: float = NAN, rel_err: float = NAN, **stats: Any) -> Comparison:
        return Comparison(False, abs_err, rel_err, tol.atol, tol.rtol, f"output '{name}': {msg}", rules=rule,
                          **stats)

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
        return Comparison(True, 0.0, 0.0, tol.atol, tol.rtol, mean_abs_err=0.0, p99_abs_err=0.0, rules=rule)
    abs_err = float(diff.max())
    big = np.abs(r) > tol.atol
    rel_err = float((diff[big] / np.abs(r[big])).max()) if big.any() else 0.0
    stats: dict[str, Any] = {"mean_abs_err": float(diff.mean()), "p99_abs_err": float(np.percentile(diff, 99))}
    if use_oracle:
        # Where the float64 run is not finite (float64's own overflow, or a mask built from its finfo.min that
        # turns -inf in a float32 softmax) it says nothing: those elements are judged against r, by the policy.
        o = oracle.astype(np.float64)
        known = np.isfinite(o)
        with np.errstate(invalid="ignore", divide="ignore"):
            off = np.where(known, np.abs(c - o), 0.0)
            allowed = np.where(known, oracle_allowance(ref, oracle), tol.atol + tol.rtol * np.abs(r))
            err = np.where(known, off, diff)
            bad = ~(err <= allowed)
            used = np.where(err == 0, 0.0, np.nan_to_num(err / allowed, nan=np.inf))
        stats |= {"oracle_abs_err": float(np.max(off)),
                  "reference_oracle_abs_err": float(np.max(np.where(known, np.abs(r - o), 0.0)))}
        idx = np.unravel_index(int(np.argmax(used)), r.shape)
        worst = _element(name, idx, ref, cand, tol, oracle, float(allowed[idx]))
        where = (f"{int(bad.sum())} of {bad.size} elements out of tolerance (further from float64 than eager "
                 "float32 is allowed to be)")
    else:
        bad = diff > tol.atol + tol.rtol * np.abs(r)
        idx = np.unravel_index(int(np.argmax(diff - tol.rtol * np.abs(r))), r.shape)
        worst = _element(name, idx, ref, cand, tol)
        where = f"{int(bad.sum())} of {bad.size} elements out of tolerance"
    if bad.any():
        versus = f", float64 {float(oracle[idx]):.9g}" if use_oracle else ""
        return fail(f"{where}; worst at {tuple(worst['index'])}: {float(c[idx]):.9g} vs reference "
                    f"{float(r[idx]):.9g}{versus}", abs_err, rel_err, worst=worst, **stats)
    return Comparison(True, abs_err, rel_err, tol.atol, tol.rtol, worst=worst, rules=rule, **stats)


def compare_outputs(names: Sequence[str], refs: Sequence[np.ndarray], cands: Sequence[np.ndarray],
                    tols: Sequence[Tolerance], oracles: Sequence[np.ndarray | None] | None = None) -> Comparison:
    """All outputs (each against its float64 run where `oracles` has one, see `compare_array`); a different
    number of outputs is a failure in itself. The tolerance and `worst` reported are the first failing
    output's; on a pass, `worst` is the element using the largest fraction of its allowance across outputs,
    and the tolerance the first output's."""
    if len(refs) != len(cands):
        t = tols[0] if tols else Tolerance(0.0, 0.0)
        return Comparison(False, NAN, NAN, t.atol, t.rtol, f"{len(cands)} outputs, the reference has {len(refs)}")
    oracles = list(oracles) if oracles is not None and len(oracles) == len(refs) else [None] * len(refs)
    verdicts = [compare_array(n, r, c, t, o) for n, r, c, t, o in zip(names, refs, cands, tols, oracles)]
    if not verdicts:
        return Comparison(True, 0.0, 0.0, 0.0, 0.0, mean_abs_err=0.0, p99_abs_err=0.0)
    failed = next((v for v in verdicts if not v.ok), None)
    shown = failed or verdicts[0]
    sizes = [r.size for r in refs]
    mean = sum(v.mean_abs_err * n for v, n in zip(verdicts, sizes) if n) / sum(sizes) if sum(sizes) else 0.0
    worst = failed.worst if failed else max((v.worst for v in verdicts if v.worst), key=_used, default=None)
    judged = [v for v in verdicts if not math.isnan(v.reference_oracle_abs_err)]
    return Comparison(failed is None, float(np.max([v.max_abs_err for v in verdicts])),
                      float(np.max([v.max_rel_err for v in verdicts])), shown.atol, shown.rtol,
                      failed.message if failed else None, mean_abs_err=float(mean),
                      p99_abs_err=float(np.max([v.p99_abs_err for v in verdicts])), worst=worst,
                      rules={k: r for v in verdicts for k, r in v.rules.items()},
                      oracle_abs_err=float(np.max([v.oracle_abs_err for v in judged])) if judged else NAN,
                      reference_oracle_abs_err=max((v.reference_oracle_abs_err for v in judged), default=NAN))


def _element(name: str, idx: tuple[Any, ...], ref: np.ndarray, cand: np.ndarray, tol: Tolerance,
             oracle: np.ndarray | None = None, allowed: float | None = None) -> dict[str, Any]:
    """The `worst` record of one element: values as Python numbers (ints stay ints), its error and allowance
    (under the oracle rule: its float64 value, its distance from it, and the allowance of that distance)."""
    r, c = _scalar(ref[idx]), _scalar(cand[idx])
    out = {"output": name, "index": [int(i) for i in idx], "candidate": c, "reference": r,
           "abs_err": abs(float(c) - float(r)), "allowed": tol.atol + tol.rtol * abs(float(r))}
    if oracle is not None and np.isfinite(oracle[idx]):
        o = float(oracle[idx])
        out |= {"oracle": o, "oracle_abs_err": abs(float(c) - o), "allowed": allowed}
    return out


def _scalar(x: Any) -> int | float | bool:
    kind = np.asarray(x).dtype.kind
    return bool(x) if kind == "b" else int(x) if kind in "iu" else float(x)


def _used(worst: dict[str, Any]) -> float:
    """How much of its allowance an element uses: its error (from float64 under the oracle rule) / allowed
    (inf past a zero allowance)."""
    err = worst.get("oracle_abs_err", worst["abs_err"])
    if err == 0:
        return 0.0
    return err / worst["allowed"] if worst["allowed"] else float("inf")


def _nonfinite(a: np.ndarray) -> str:
    parts = [f"{n} {what}" for what, n in (("NaN", int(np.isnan(a).sum())), ("Inf", int(np.isinf(a).sum()))) if n]
    return " and ".join(parts)

"""Tolerance policy: which (atol, rtol) decides pass or fail, per output dtype and per target.

An element passes when |candidate - reference| <= atol + rtol * |reference| (numpy.allclose's rule).
NaN or Inf in any output never passes, whatever the tolerance.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np


@dataclasses.dataclass(frozen=True)
class Tolerance:
    atol: float
    rtol: float

    def __post_init__(self) -> None:
        if not (self.atol >= 0 and self.rtol >= 0):
            raise ValueError(f"tolerances must be >= 0, got atol={self.atol}, rtol={self.rtol}")


DEFAULT_BY_DTYPE: Mapping[str, Tolerance] = {
    "float64": Tolerance(1e-9, 1e-7),
    "float32": Tolerance(1e-5, 1e-4),
    "float16": Tolerance(1e-3, 1e-2),
    "bfloat16": Tolerance(1e-2, 5e-2),
}
EXACT = Tolerance(0.0, 0.0)
"""Integer and boolean outputs must match exactly."""

DEFAULT_BY_TARGET: Mapping[str, Mapping[str, Tolerance]] = {
    # An independent implementation compiled by XLA: its own reduction orders, exp/tanh and matmul kernels.
    "flax": {"float32": Tolerance(1e-4, 1e-3)},
}


@dataclasses.dataclass(frozen=True)
class TolerancePolicy:
    """Defaults per dtype, refined per target; `override` (from the CLI or a caller) wins over both."""

    by_dtype: Mapping[str, Tolerance] = dataclasses.field(default_factory=lambda: dict(DEFAULT_BY_DTYPE))
    by_target: Mapping[str, Mapping[str, Tolerance]] = dataclasses.field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_BY_TARGET.items()})
    override: Tolerance | None = None

    def for_output(self, target: str, dtype: np.dtype | str) -> Tolerance:
        name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
        if self.override is not None:
            return self.override
        if name in self.by_target.get(target, {}):
            return self.by_target[target][name]
        if name in self.by_dtype:
            return self.by_dtype[name]
        return EXACT

    def with_override(self, atol: float | None, rtol: float | None) -> "TolerancePolicy":
        """This policy with a fixed (atol, rtol) for every output; a missing half keeps the float32 default."""
        if atol is None and rtol is None:
            return self
        base = self.by_dtype["float32"]
        tol = Tolerance(base.atol if atol is None else atol, base.rtol if rtol is None else rtol)
        return dataclasses.replace(self, override=tol)

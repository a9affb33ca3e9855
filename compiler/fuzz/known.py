"""Known divergences: disagreements the fuzzer finds that belong upstream, so a run reports them as known.

This registry mirrors docs/known-divergences.md (a test keeps the two equal); each entry names the target, an op
the captured graph must contain, a pattern of the error or verdict, why it happens and the upstream issue.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Iterable


@dataclasses.dataclass(frozen=True)
class KnownDivergence:
    """One upstream divergence: on `target`, programs with `op` whose error text matches `pattern`."""

    target: str
    op: str
    pattern: str
    reason: str
    issue: str

    def matches(self, target: str, ops: Iterable[str], error: str) -> bool:
        return target == self.target and self.op in set(ops) and re.search(self.pattern, error) is not None

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


_AMAX_DIM = ("onnxscript's torch_lib declares `dim` of `aten_amax` without its schema default `[]`, so a full "
             "reduction `torch.amax(x)` cannot be exported")

KNOWN: tuple[KnownDivergence, ...] = (
    KnownDivergence("onnx", "aten.amax.default", r"'dim' is not provided\. Signature: \S+::aten_amax\(", _AMAX_DIM,
                    "https://github.com/microsoft/onnxscript/pull/3035"),
    KnownDivergence("onnx", "aten.amin.default", r"'dim' is not provided\. Signature: \S+::aten_amin\(",
                    "the same for `aten_amin`: `torch.amin(x)` cannot be exported",
                    "https://github.com/microsoft/onnxscript/pull/3035"),
    KnownDivergence("onnx", "aten.scaled_dot_product_attention.default",
                    "only 4D query, key, and value are supported",
                    "the exporter translates attention only for 4-D q, k and v (by design); capture keeps attention "
                    "whole, so 2-D and 3-D attention cannot be exported",
                    "https://github.com/microsoft/onnxscript/pull/2558"),
    KnownDivergence("onnx", "aten.scaled_dot_product_attention.default",
                    r"out of tolerance; worst at \([^)]*\): \S+ vs reference 0$",
                    "a boolean mask row that allows no key gives zeros in torch; the exporter fills masked scores "
                    "with the dtype's finite minimum, so ONNX Runtime returns the mean of v",
                    "not yet reported upstream (microsoft/onnxscript)"),
)
"""Every known divergence, in the order docs/known-divergences.md lists them."""


def classify(target: str, ops: Iterable[str], error: str) -> KnownDivergence | None:
    """The known divergence a disagreement is an instance of, or None when it is new."""
    ops = tuple(ops)
    return next((k for k in KNOWN if k.matches(target, ops, error)), None)

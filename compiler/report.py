"""ParityReport: per-target results, written as DESIGN.md's JSON, as JUnit XML, or as a table for people."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any
from xml.etree import ElementTree as ET

STATUSES = ("pass", "fail", "error", "skipped")


@dataclasses.dataclass
class TargetResult:
    """One target's verdict. For `skipped`, `error` holds the reason."""

    status: str
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    atol: float | None = None
    rtol: float | None = None
    seconds: float = 0.0
    error: str | None = None
    first_divergent_node: dict[str, Any] | None = None
    bad_input: bool = dataclasses.field(default=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "max_abs_err": _num(self.max_abs_err),
                "max_rel_err": _num(self.max_rel_err), "atol": self.atol, "rtol": self.rtol,
                "seconds": round(self.seconds, 4), "error": self.error,
                "first_divergent_node": self.first_divergent_node}


@dataclasses.dataclass
class ParityReport:
    spec: str
    targets: dict[str, TargetResult]
    capture_seconds: float = 0.0
    output_names: list[str] = dataclasses.field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 all ran targets within tolerance, 2 a target hit bad input (e.g. an unsupported op), 1 otherwise."""
        if any(r.status == "error" and r.bad_input for r in self.targets.values()):
            return 2
        return 1 if any(r.status in ("fail", "error") for r in self.targets.values()) else 0

    @property
    def passed(self) -> bool:
        return self.exit_code == 0

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "targets": {name: r.to_json() for name, r in self.targets.items()}}

    def write_json(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=2)
            f.write("\n")

    def write_junit(self, path: str | os.PathLike[str]) -> None:
        """One testsuite, one testcase per target: fail -> <failure>, error -> <error>, skipped -> <skipped>."""
        counts = {s: sum(r.status == s for r in self.targets.values()) for s in STATUSES}
        suite = ET.Element("testsuite", name=f"crossgraph check {self.spec}", tests=str(len(self.targets)),
                           failures=str(counts["fail"]), errors=str(counts["error"]),
                           skipped=str(counts["skipped"]),
                           time=f"{sum(r.seconds for r in self.targets.values()) + self.capture_seconds:.3f}")
        for name, r in self.targets.items():
            case = ET.SubElement(suite, "testcase", classname=f"crossgraph.{self.spec}", name=name,
                                 time=f"{r.seconds:.3f}")
            tag = {"fail": "failure", "error": "error", "skipped": "skipped"}.get(r.status)
            if tag:
                ET.SubElement(case, tag, message=(r.error or "").splitlines()[0] if r.error else "").text = r.error
        ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)

    def table(self) -> str:
        """The parity table people read: target, status, errors, tolerance, seconds, and why if not a pass."""
        header = ("target", "status", "max_abs_err", "max_rel_err", "atol", "rtol", "seconds")
        rows = [(name, r.status, _fmt(r.max_abs_err), _fmt(r.max_rel_err), _fmt(r.atol), _fmt(r.rtol),
                 f"{r.seconds:.2f}") for name, r in self.targets.items()]
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in (header, *rows)]
        lines.insert(1, "  ".join("-" * w for w in widths))
        notes = [f"  {name}: {(r.error or '').splitlines()[0]}" for name, r in self.targets.items()
                 if r.status != "pass" and r.error]
        return "\n".join(lines + (["", "notes:"] + notes if notes else []))


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def _fmt(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.1e}"

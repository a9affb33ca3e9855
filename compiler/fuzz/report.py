"""FuzzReport: what a fuzz run checked, per target and status, and every disagreement with its program."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Sequence

from crossgraph.compiler.fuzz.known import KnownDivergence
from crossgraph.compiler.report import STATUSES


@dataclasses.dataclass(frozen=True)
class Finding:
    """A disagreement: `target` failed (`status` "fail": wrong numbers; "error": it raised) on a program.

    `target` is "capture" when the program itself could not be captured or run eagerly (a generator bug).
    `source` reproduces the program; `ops` are its captured graph's ops; `known` is set for upstream issues.
    """

    program: int
    target: str
    status: str
    error: str
    source: str
    ops: tuple[str, ...] = ()
    known: KnownDivergence | None = None

    @property
    def headline(self) -> str:
        """The line of the error that says what went wrong: the innermost error where a target names one."""
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).strip() for ln in (self.error or "").splitlines()]
        lines = [ln for ln in lines if ln]
        inner = [ln for ln in lines if "innermost error" in ln]
        return (inner or lines or ["(no message)"])[0]

    def to_json(self) -> dict[str, Any]:
        return {"program": self.program, "target": self.target, "status": self.status, "error": self.error,
                "ops": list(self.ops), "source": self.source,
                "known": self.known.to_json() if self.known else None}


@dataclasses.dataclass
class FuzzReport:
    """A fuzz run: `counts[target][status]` over the programs each target ran, and the findings."""

    seed: int
    targets: tuple[str, ...]
    inductor_every: int
    seconds: float = 0.0
    programs: int = 0
    counts: dict[str, dict[str, int]] = dataclasses.field(default_factory=dict)
    findings: list[Finding] = dataclasses.field(default_factory=list)
    skip_reasons: dict[str, str] = dataclasses.field(default_factory=dict)
    """Why each target that skipped a program did (the first reason it gave)."""

    @property
    def new(self) -> list[Finding]:
        return [f for f in self.findings if f.known is None]

    @property
    def known(self) -> list[Finding]:
        return [f for f in self.findings if f.known is not None]

    @property
    def nothing_ran(self) -> bool:
        """Whether no program ran on any target: every target skipped every program (none of them can run
        here), or no program was checked at all. Programs that failed to capture are findings, not this."""
        ran = sum(n for target, c in self.counts.items() if target != "capture"
                  for status, n in c.items() if status != "skipped")
        return ran == 0 and not self.counts.get("capture")

    @property
    def exit_code(self) -> int:
        """1 when there is a new disagreement, else 2 when no program ran on any target (bad input: the targets
        cannot run here), else 0: every disagreement is a known divergence."""
        return 1 if self.new else 2 if self.nothing_ran else 0

    def nothing_ran_message(self, runnable: Sequence[str] = ()) -> str:
        """One line for a run in which nothing ran: why each target skipped, and the `runnable` targets to name
        instead."""
        if not self.programs:
            return "no fuzz program ran: the time ran out before the first one; give more --seconds"
        reasons = "; ".join(f"{t}: {_first_line(r)}" for t, r in self.skip_reasons.items())
        hint = (f"name targets that can run here, e.g. --targets {','.join(runnable)}" if runnable
                else "no lowered target can run here")
        return f"no fuzz program ran on any target, each was skipped ({reasons}): {hint}"

    def count(self, target: str, status: str) -> None:
        self.counts.setdefault(target, dict.fromkeys(STATUSES, 0))
        self.counts[target][status] = self.counts[target].get(status, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return {"seed": self.seed, "targets": list(self.targets), "inductor_every": self.inductor_every,
                "seconds": round(self.seconds, 3), "programs": self.programs, "counts": self.counts,
                "new_findings": len(self.new), "known_findings": len(self.known),
                "findings": [f.to_json() for f in self.findings]}

    def summary(self) -> str:
        """Counts per target, known divergences by upstream issue, and each kind of new finding with the
        shortest program that shows it."""
        lines = [f"crossgraph fuzz: {self.programs} programs in {self.seconds:.1f} s (seed {self.seed}; targets "
                 f"{', '.join(self.targets)}"
                 + (f"; inductor on 1 program in {self.inductor_every})" if "inductor" in self.targets
                    and len(self.targets) > 1 and self.inductor_every > 1 else ")")]
        statuses = list(STATUSES)
        header = ("target", "ran", *statuses)
        rows = [(t, str(sum(c.values())), *(str(c.get(s, 0)) for s in statuses)) for t, c in self.counts.items()]
        widths = [max(len(x) for x in col) for col in zip(header, *rows)]
        lines += ["  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in (header, *rows)]
        by_issue: dict[KnownDivergence, int] = {}
        for f in self.known:
            assert f.known is not None
            by_issue[f.known] = by_issue.get(f.known, 0) + 1
        if by_issue:
            lines.append(f"\nknown divergences ({len(self.known)} finding{'' if len(self.known) == 1 else 's'}):")
            lines += [f"  {k.target} {k.op}: {n}x, {k.reason}; upstream: {k.issue}" for k, n in by_issue.items()]
        groups: dict[tuple[str, str, str], list[Finding]] = {}
        for f in self.new:
            groups.setdefault((f.target, f.status, _shape_of(f.headline)), []).append(f)
        lines.append(f"\nnew findings: {len(self.new)}" + (f" ({len(groups)} kinds)" if groups else ""))
        for (target, status, _), found in groups.items():
            shortest = min(found, key=lambda f: len(f.source))
            lines.append(f"\n- {target} {status} on {len(found)} program(s), e.g. program {shortest.program}: "
                         f"{shortest.headline}")
            lines += ["    " + ln for ln in shortest.source.rstrip().splitlines()]
        return "\n".join(lines)


def _shape_of(headline: str) -> str:
    """A headline with numbers, names and positions blanked, so one bug's findings group together."""
    return re.sub(r"'[^']*'|\d+(\.\d+)?(e[-+]?\d+)?|\([^)]*\)", "#", headline)


def _first_line(text: str) -> str:
    return (text or "").strip().splitlines()[0] if (text or "").strip() else "no reason given"

"""ParityReport: per-target results, written as DESIGN.md's JSON, as JUnit XML for CI, as Markdown for a
pull-request comment, or as a table for the terminal."""

from __future__ import annotations

import dataclasses
import html
import json
import math
import os
import re
from typing import Any
from xml.etree import ElementTree as ET

import numpy as np

from crossgraph.compiler.compare import combined_rule

STATUSES = ("pass", "fail", "error", "skipped")
_ICONS = {"pass": "✅", "fail": "❌", "error": "⚠️", "skipped": "⏭️"}
_VERBS = {"pass": "passed", "fail": "failed", "error": "errored", "skipped": "skipped"}


@dataclasses.dataclass
class CaseResult:
    """One drawn example on one target: its verdict, error statistics, tolerance and time."""

    example: int
    status: str
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    mean_abs_err: float | None = None
    p99_abs_err: float | None = None
    worst: dict[str, Any] | None = None
    atol: float | None = None
    rtol: float | None = None
    seconds: float = 0.0
    error: str | None = None
    oracle_abs_err: float | None = None
    reference_oracle_abs_err: float | None = None
    rules: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """JSON-able dict; non-finite errors become null, non-finite values inside `worst` strings ("nan")."""
        return {"example": self.example, "status": self.status, "max_abs_err": _num(self.max_abs_err),
                "max_rel_err": _num(self.max_rel_err), "mean_abs_err": _num(self.mean_abs_err),
                "p99_abs_err": _num(self.p99_abs_err), "worst": _jsonable(self.worst), "atol": self.atol,
                "rtol": self.rtol, "seconds": round(self.seconds, 4), "error": self.error,
                **_oracle_json(self)}


@dataclasses.dataclass
class TargetResult:
    """One target's verdict. For `skipped`, `error` holds the reason. `cases` holds each example's result when
    more than the example inputs ran; `bisect` is the pass bisection's record (compiler.pass_bisect)."""

    status: str
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    atol: float | None = None
    rtol: float | None = None
    seconds: float = 0.0
    error: str | None = None
    first_divergent_node: dict[str, Any] | None = None
    bad_input: bool = dataclasses.field(default=False, repr=False)
    mean_abs_err: float | None = None
    p99_abs_err: float | None = None
    worst: dict[str, Any] | None = None
    cases: list[CaseResult] = dataclasses.field(default_factory=list)
    bisect: dict[str, Any] | None = None
    oracle_abs_err: float | None = None
    """max |candidate - float64 run| over the outputs judged against float64 (compiler.oracle), and"""
    reference_oracle_abs_err: float | None = None
    """max |eager float32 - float64 run| over the same outputs: the float32 error the first is measured by."""
    rules: dict[str, str] = dataclasses.field(default_factory=dict)
    """The rule that judged each output: "float64-oracle", "tolerance" (compiler.compare), or a
    dtype-specific one (e.g. "quantized-steps")."""

    def to_json(self) -> dict[str, Any]:
        """DESIGN.md's fields in their order, then mean/p99 errors, worst element, examples, cases (only when
        more than one example ran) and bisect."""
        out = {"status": self.status, "max_abs_err": _num(self.max_abs_err),
               "max_rel_err": _num(self.max_rel_err), "atol": self.atol, "rtol": self.rtol,
               "seconds": round(self.seconds, 4), "error": self.error,
               "first_divergent_node": _jsonable(self.first_divergent_node),
               "mean_abs_err": _num(self.mean_abs_err), "p99_abs_err": _num(self.p99_abs_err),
               "worst": _jsonable(self.worst), "examples": len(self.cases) or 1, **_oracle_json(self)}
        if len(self.cases) > 1:
            out["cases"] = [c.to_json() for c in self.cases]
        out["bisect"] = _jsonable(self.bisect)
        return out


@dataclasses.dataclass
class ParityReport:
    """Every target's result for one spec, with the tolerance policy (TolerancePolicy.describe()) and the
    seed the examples were drawn with."""

    spec: str
    targets: dict[str, TargetResult]
    capture_seconds: float = 0.0
    output_names: list[str] = dataclasses.field(default_factory=list)
    policy: dict[str, Any] | None = None
    seed: int | None = None
    strict: bool = False
    """`crossgraph check --strict`: a requested target that did not run (skipped) fails the check too."""
    oracle_note: str | None = None
    """Why the float64 oracle did not run as the model as written (compiler.oracle), when it did not."""

    @property
    def exit_code(self) -> int:
        """DESIGN.md's exit code: 2 a target hit bad input (e.g. an unsupported op), 1 a target failed or
        crashed, or (strict) a target was skipped, 0 otherwise: without `strict`, every target that ran is within
        tolerance, which a run whose targets were all skipped is too (see `passed` and `verdict`)."""
        if any(r.status == "error" and r.bad_input for r in self.targets.values()):
            return 2
        if any(r.status in ("fail", "error") for r in self.targets.values()):
            return 1
        return 1 if self.strict and self.verdict_status != "pass" else 0

    @property
    def passed(self) -> bool:
        """Whether every requested target ran and passed: a skipped target is not a pass."""
        return bool(self.targets) and all(r.status == "pass" for r in self.targets.values())

    @property
    def counts(self) -> dict[str, int]:
        """How many targets ended in each status, every status listed."""
        counts = dict.fromkeys(STATUSES, 0)
        for r in self.targets.values():
            counts[r.status] = counts.get(r.status, 0) + 1
        return counts

    @property
    def verdict_status(self) -> str:
        """The verdict: "fail" a target is out of tolerance, else "error" a target crashed, else "incomplete" a
        target was skipped (or none was requested), else "pass": every requested target ran and passed."""
        counts = self.counts
        for status in ("fail", "error"):
            if counts[status]:
                return status
        return "pass" if self.passed else "incomplete"

    def verdict(self) -> dict[str, Any]:
        """The JSON report's top-level verdict: status (see verdict_status), targets per status, and strict."""
        return {"status": self.verdict_status, "counts": self.counts, "strict": self.strict}

    def verdict_line(self) -> str:
        """One line for people: the verdict, the counts, and for an incomplete run the skipped targets and what
        --strict does with them."""
        counts = ", ".join(f"{n} {_VERBS.get(s, s)}" for s, n in self.counts.items() if n) or "no targets"
        line = f"verdict: {self.verdict_status} ({counts})"
        skipped = [name for name, r in self.targets.items() if r.status == "skipped"]
        if skipped:
            line += f"; not run: {', '.join(skipped)}" + (" (--strict: a skipped target fails the check)"
                                                          if self.strict else " (--strict would fail on this)")
        return line

    def to_json(self) -> dict[str, Any]:
        """DESIGN.md's report: spec and targets, then seed, policy and the verdict."""
        return {"spec": self.spec, "targets": {name: r.to_json() for name, r in self.targets.items()},
                "seed": self.seed, "policy": _jsonable(self.policy), "verdict": self.verdict(),
                "oracle_note": self.oracle_note}

    def write_json(self, path: str | os.PathLike[str]) -> None:
        """Strict JSON (no NaN tokens): see to_json. Serialized whole first, then written atomically: a report
        that cannot be serialized, or a write that fails, leaves no file (and an older one untouched)."""
        from crossgraph.compiler.artifact import write_atomically

        write_atomically(path, json.dumps(self.to_json(), indent=2, allow_nan=False) + "\n")

    def write_junit(self, path: str | os.PathLike[str]) -> None:
        """<testsuites><testsuite> with one <testcase> per target, or per target per example ("onnx[example 3]")
        when examples were drawn: fail -> <failure>, error -> <error>, skipped -> <skipped>. A failure's text
        is the full error and worst element; the target's first non-passing case also gets the first divergent
        node and the pass bisection, which were found on its inputs."""
        suite = ET.Element("testsuite", name=f"crossgraph check {self.spec}")
        props = ET.SubElement(suite, "properties")
        for name, value in (("spec", self.spec), ("seed", self.seed), ("policy", self.policy),
                            ("verdict", self.verdict())):
            if value is not None:
                text = value if isinstance(value, str) else json.dumps(_jsonable(value), sort_keys=True)
                ET.SubElement(props, "property", name=name, value=_printable(str(text)))
        counts = dict.fromkeys(STATUSES, 0)
        for target, r in self.targets.items():
            first_bad = next((run for _, run in _runs(r) if run.status != "pass"), None)
            for label, run in _runs(r):
                counts[run.status] = counts.get(run.status, 0) + 1
                case = ET.SubElement(suite, "testcase", classname=f"crossgraph.{self.spec}",
                                     name=f"{target}[{label}]" if label else target, time=f"{run.seconds:.3f}")
                tag = {"fail": "failure", "error": "error", "skipped": "skipped"}.get(run.status)
                if tag:
                    child = ET.SubElement(case, tag, message=_printable(_first_line(run.error)))
                    if tag != "skipped":
                        child.set("type", run.status)
                        child.text = _printable(_detail_text(run, r if run is first_bad else None))
        total = sum(counts.values())
        seconds = f"{sum(r.seconds for r in self.targets.values()) + self.capture_seconds:.3f}"
        suite.attrib.update(tests=str(total), failures=str(counts["fail"]), errors=str(counts["error"]),
                            skipped=str(counts["skipped"]), time=seconds)
        root = ET.Element("testsuites", name="crossgraph check", tests=str(total), failures=str(counts["fail"]),
                          errors=str(counts["error"]), time=seconds)
        root.append(suite)
        from crossgraph.compiler.artifact import write_atomically

        write_atomically(path, ET.tostring(root, encoding="utf-8", xml_declaration=True))

    def table(self) -> str:
        """The parity table people read: target, status, errors, tolerance, the errors against the float64
        oracle (the candidate's, and eager float32's own), seconds; then notes saying why a target did not pass,
        its first divergent node and its pass bisection."""
        header = ("target", "status", "max_abs_err", "max_rel_err", "atol", "rtol", "vs_float64", "eager_vs_f64",
                  "seconds")
        rows = [(name, r.status, _fmt(r.max_abs_err), _fmt(r.max_rel_err), _fmt(r.atol), _fmt(r.rtol),
                 _fmt(r.oracle_abs_err), _fmt(r.reference_oracle_abs_err), f"{r.seconds:.2f}")
                for name, r in self.targets.items()]
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        lines = ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in (header, *rows)]
        lines.insert(1, "  ".join("-" * w for w in widths))
        notes = [f"  float64 oracle: {self.oracle_note}"] if self.oracle_note else []
        for name, r in self.targets.items():
            if r.status != "pass" and r.error:
                notes.append(f"  {name}: {_first_line(r.error)}")
            if r.first_divergent_node:
                notes.append(f"  {name}: first divergent node: {_node_text(r.first_divergent_node)}")
            if r.bisect:
                notes.append(f"  {name}: pass bisection: {_bisect_text(r.bisect)}")
        return "\n".join(lines + (["", "notes:"] + notes if notes else []) + ["", self.verdict_line()])

    def markdown(self) -> str:
        """A pull-request comment (GitHub-flavoured Markdown): the verdict, a table of targets, and a
        collapsed block per failing or erroring target with its error, worst element, first divergent node
        and pass bisection. The first line is the verdict: ✅ every target passed, ❌ the check fails (with
        --strict, a skipped target fails it), ⏭️ incomplete (a target was skipped, which does not fail it)."""
        counts = ", ".join(f"{n} {_VERBS[s]}" for s, n in self.counts.items() if n) or "no targets"
        status = self.verdict_status
        icon = _ICONS["pass"] if status == "pass" else _ICONS["fail"] if self.exit_code else _ICONS["skipped"]
        lines = [f"{icon} **crossgraph check** {_code(self.spec)}: {counts} — **{status}**"
                 + (" (strict)" if self.strict else "")]
        about = ([f"seed {self.seed}"] if self.seed is not None else []) + (
            [f"tolerances: {_policy_text(self.policy)}"] if self.policy is not None else [])
        if about:
            lines += ["", _md(" · ".join(about))]
        lines += ["", "| target | status | max abs err | max rel err | tolerance | seconds | examples |",
                  "|---|---|--:|--:|---|--:|--:|"]
        for name, r in self.targets.items():
            tol = "-" if r.atol is None else f"atol {_fmt(r.atol)}, rtol {_fmt(r.rtol)}"
            examples = "-" if r.status == "skipped" else _examples_text(r)
            cells = (name, f"{_ICONS.get(r.status, '')} {r.status}", _fmt(r.max_abs_err), _fmt(r.max_rel_err),
                     tol, f"{r.seconds:.2f}", examples)
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
        for name, r in self.targets.items():
            if r.status in ("fail", "error"):
                lines += ["", *_details(name, r)]
        return "\n".join(lines) + "\n"

    def write_markdown(self, path: str | os.PathLike[str]) -> None:
        """Write markdown() to `path`, atomically."""
        from crossgraph.compiler.artifact import write_atomically

        write_atomically(path, self.markdown())


def _runs(r: TargetResult) -> list[tuple[str | None, CaseResult | TargetResult]]:
    """What JUnit lists as test cases: (label, result) per example, or (None, the target) without examples."""
    return [(f"example {c.example}", c) for c in r.cases] or [(None, r)]


def _details(name: str, r: TargetResult) -> list[str]:
    """The <details> block of one target that did not pass."""
    out = ["<details>", f"<summary><b>{html.escape(name)}</b> {_VERBS[r.status]}: "
                        f"{html.escape(_printable(_first_line(r.error)))}</summary>", ""]
    if r.error:
        fence = "`" * max(3, _longest_run(r.error, "`") + 1)
        out += [f"{fence}text", _printable(r.error), fence, ""]
    if r.worst:
        out += [f"**worst element**: {_worst_md(r.worst)}", ""]
    if r.first_divergent_node:
        out += [f"**first divergent node**: {_node_md(r.first_divergent_node)}", ""]
    if r.bisect:
        out += [f"**pass bisection**: {_md(_bisect_text(r.bisect))}", ""]
    bad = [c.example for c in r.cases if c.status != "pass"]
    if bad:
        out += [f"**examples not passing**: {', '.join(map(str, bad))} (of {len(r.cases)})", ""]
    return out + ["</details>"]


def _detail_text(run: CaseResult | TargetResult, target: TargetResult | None) -> str:
    """A JUnit failure's body: the error, the worst element, and `target`'s diagnosis when given."""
    parts = [run.error or ""]
    if run.worst:
        parts.append(f"worst element: {_worst_text(run.worst)}")
    if target is not None and target.first_divergent_node:
        parts.append(f"first divergent node: {_node_text(target.first_divergent_node)}")
    if target is not None and target.bisect:
        parts.append(f"pass bisection: {_bisect_text(target.bisect)}")
    return "\n\n".join(p for p in parts if p)


def _worst_text(w: dict[str, Any]) -> str:
    return (f"output '{w.get('output')}' at {w.get('index')}: candidate {_val(w.get('candidate'))}, reference "
            f"{_val(w.get('reference'))}, abs err {_val(w.get('abs_err'), '.1e')}"
            + (f" (allowed {_fmt(w['allowed'])})" if "allowed" in w else ""))


def _worst_md(w: dict[str, Any]) -> str:
    return (f"output {_code(str(w.get('output')))} at {_code(str(w.get('index')))}: candidate "
            f"{_code(_val(w.get('candidate')))}, reference {_code(_val(w.get('reference')))}, abs err "
            f"{_val(w.get('abs_err'), '.1e')}" + (f" (allowed {_fmt(w['allowed'])})" if "allowed" in w else ""))


_NODE_KEYS = {"op", "node", "provenance", "file", "line", "module", "module_path", "function", "max_abs_err",
              "max_rel_err", "atol", "rtol", "worst_index", "inputs_ok", "error", "message"}


def _node_fields(node: dict[str, Any]) -> tuple[str, str, str, str, str, str]:
    """(op, node name, "file:line", module path, statistics, message) of a first divergent node record
    (compiler.localize's, or one with flat provenance keys); '' for what it lacks. Unknown keys join the
    statistics as k=v."""
    prov = node.get("provenance")
    src = prov if isinstance(prov, dict) else node
    where = f"{src['file']}:{src.get('line', '?')}" if src.get("file") else (prov if isinstance(prov, str) else "")
    module = str(src.get("module_path") or src.get("module") or "")
    stats = [f"{k.replace('_', ' ')} {_fmt(node[k])}" for k in ("max_abs_err", "max_rel_err")
             if node.get(k) is not None]
    if node.get("atol") is not None:
        stats.append(f"tolerance atol {_fmt(node['atol'])} rtol {_fmt(node.get('rtol'))}")
    stats += [f"{k}={v}" for k, v in node.items() if k not in _NODE_KEYS]
    message = _first_line(str(node.get("message") or node.get("error") or ""))
    return str(node.get("op") or ""), str(node.get("node") or ""), where, module, ", ".join(stats), message


def _node_text(node: dict[str, Any]) -> str:
    """One line: the record's own message (it names node, op and source) with the statistics, or without a
    message "op (node) at file:line in module: statistics"."""
    op, name, where, module, stats, message = _node_fields(node)
    if message:
        return f"{message} ({stats})" if stats else message
    head = " ".join(x for x in (op, f"({name})" if name else "", f"at {where}" if where else "",
                                f"in {module}" if module else "") if x)
    return f"{head}: {stats}" if head and stats else head or stats


def _node_md(node: dict[str, Any]) -> str:
    """`op` (`node`) at `file:line` in `module`: statistics — message."""
    op, name, where, module, stats, message = _node_fields(node)
    head = " ".join(x for x in (_code(op) if op else "", f"({_code(name)})" if name else "",
                                f"at {_code(where)}" if where else "", f"in {_code(module)}" if module else "") if x)
    tail = " — ".join(_md(x) for x in (stats, message) if x)
    return f"{head}: {tail}" if head and tail else head or tail


def _bisect_text(b: dict[str, Any]) -> str:
    """The bisection's message and the prefixes it tried; every key as k=v when it has no message."""
    if "message" not in b:
        return ", ".join(f"{k}={v}" for k, v in b.items())
    tried = b.get("tried") or {}
    steps = ", ".join(f"{k} passes: {_first_line(str(v))}"
                      for k, v in sorted(tried.items(), key=lambda kv: str(kv[0]).zfill(9)))
    return f"{b['message']} (tried {steps})" if steps else str(b["message"])


def _policy_text(policy: dict[str, Any]) -> str:
    source = policy.get("source") or "defaults"
    over = policy.get("override")
    return f"{source}, override atol {_fmt(over['atol'])} rtol {_fmt(over['rtol'])}" if over else source


def _examples_text(r: TargetResult) -> str:
    bad = sum(c.status != "pass" for c in r.cases)
    return f"{len(r.cases) or 1}" + (f" ({bad} not passing)" if bad else "")


def _oracle_json(r: CaseResult | TargetResult) -> dict[str, Any]:
    """The float64 oracle's figures and the rules that judged each output, for to_json."""
    return {"oracle_abs_err": _num(r.oracle_abs_err), "reference_oracle_abs_err": _num(r.reference_oracle_abs_err),
            "rule": combined_rule(r.rules), "rules": dict(r.rules)}


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else x


def _jsonable(x: Any) -> Any:
    """Free-form report data as strict JSON: numpy values to Python, non-finite floats to "nan"/"inf"/"-inf"."""
    if isinstance(x, dict):
        return {k if isinstance(k, (str, int)) else str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.generic, np.ndarray)):
        return _jsonable(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x if x is None or isinstance(x, (str, int, float, bool)) else str(x)


def _fmt(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.1e}"


def _val(x: Any, spec: str = ".9g") -> str:
    """A worst-element value: floats (NaN and Inf included) formatted with `spec`, the rest as they are."""
    return format(x, spec) if isinstance(x, float) else str(x)


def _first_line(text: str | None) -> str:
    return text.splitlines()[0] if text else ""


_UNPRINTABLE = re.compile("\x1b\\[[0-9;]*[A-Za-z]|[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _printable(text: str) -> str:
    """Text without ANSI colours and control characters: XML 1.0 cannot hold them, Markdown shows them raw."""
    return _UNPRINTABLE.sub("", text)


def _longest_run(text: str, char: str) -> int:
    return max((len(m) for m in re.findall(f"{re.escape(char)}+", text)), default=0)


def _code(text: str) -> str:
    """Inline code that survives backticks inside."""
    ticks = "`" * (_longest_run(text, "`") + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _md(text: str) -> str:
    """Free text in Markdown: HTML and Markdown's own characters escaped."""
    return re.sub(r"([\\`*_\[\]|])", r"\\\1", html.escape(text, quote=False))


def _cell(text: str) -> str:
    """A table cell: one line, `|` escaped."""
    return " ".join(text.split()).replace("|", "\\|")

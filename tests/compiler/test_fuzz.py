"""The fuzzer: generated programs are valid core-ATen programs, a bounded run over onnx and jax finds nothing new,
a planted wrong translation is reported with its program, and the known-divergence registry matches its doc."""

from __future__ import annotations

import json
import operator
import re
from pathlib import Path

import jax.numpy as jnp
import pytest
import torch
import torch.utils._pytree as pytree
from hypothesis import given

from crossgraph.compiler.fuzz import KNOWN, KnownDivergence, Leaf, Program, Step, draw_programs, fuzz, programs, run
from crossgraph.compiler.fuzz import known
from crossgraph.compiler.jaxlower import registry
from crossgraph.graphs import capture
from crossgraph.graphs.capture import KEPT_OPS

DOC = Path(__file__).resolve().parents[2] / "docs" / "known-divergences.md"
NOT_CORE_BUT_EXPECTED = {operator.getitem, torch.ops.aten._assert_tensor_metadata.default, *KEPT_OPS}
"""Non-core targets capture leaves in graphs: tuple indexing (split), dtype assertions (casts), the ops it keeps
whole (attention)."""

TANH = Program(inputs=(Leaf("x0", (2, 3), "float32"),), params=(),
               steps=(Step(("v0",), "torch.tanh(x0)", "tanh"),), outputs=("v0",), seed=7)


@given(programs())
def test_generated_programs_run_eagerly_and_capture_to_core_aten(program: Program) -> None:
    inputs = program.example_inputs()
    with torch.no_grad():
        outputs = pytree.tree_leaves(program.model()(*inputs))
    assert len(outputs) == len(program.outputs), program.source()
    for out in outputs:
        assert out.is_floating_point() <= bool(torch.isfinite(out).all()), program.source()
        assert out.numel() > 0, program.source()
    graph = capture(program.model(), inputs)
    targets = {n.target for n in graph.fx.nodes if n.op == "call_function"}
    not_core = [t for t in targets - NOT_CORE_BUT_EXPECTED
                if not (isinstance(t, torch._ops.OpOverload) and torch.Tag.core in t.tags)]
    assert not not_core, f"{not_core} not in core ATen:\n{program.source()}"


def test_source_is_the_program() -> None:
    namespace: dict[str, object] = {}
    exec(TANH.source(), namespace)
    x = namespace["example_inputs"]()  # type: ignore[operator]
    torch.testing.assert_close(x, TANH.example_inputs())
    torch.testing.assert_close(namespace["Program"]()(*x)[0], torch.tanh(x[0]))  # type: ignore[operator]
    assert TANH.description() == "tanh"


def test_programs_are_drawn_deterministically_from_the_seed() -> None:
    def first(seed: int) -> list[str]:
        drawn = draw_programs(seed)
        return [next(drawn).source() for _ in range(10)]

    assert first(3) == first(3)
    assert first(3) != first(4)
    assert len(set(first(3))) == 10


def test_bounded_fuzz_run_on_onnx_and_jax_finds_nothing_new() -> None:
    report = fuzz(120, ("onnx", "jax"), seed=0, max_examples=3)
    assert report.programs == 3
    assert {t: sum(c.values()) for t, c in report.counts.items()} == {"onnx": 3, "jax": 3}
    assert report.exit_code == 0, report.summary()


@pytest.fixture
def wrong_tanh(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test-only wrong translation of aten.tanh in the jax table."""
    registry.lookup(torch.ops.aten.tanh.default)  # loads the table before it is patched
    monkeypatch.setitem(registry._TABLE, torch.ops.aten.tanh.default,
                        registry.Translation(lambda x: jnp.tanh(x) + 1e-3))


@pytest.mark.usefixtures("wrong_tanh")
def test_a_planted_wrong_translation_is_a_new_finding_with_its_program() -> None:
    report = run([TANH], ("jax",))
    assert report.counts == {"jax": {"pass": 0, "fail": 1, "error": 0, "skipped": 0}}
    [finding] = report.findings
    assert (finding.program, finding.target, finding.status, finding.known) == (0, "jax", "fail", None)
    assert "torch.tanh(x0)" in finding.source and "aten.tanh.default" in finding.ops
    assert "out of tolerance" in finding.error
    assert report.exit_code == 1
    assert "new findings: 1" in report.summary() and "torch.tanh(x0)" in report.summary()


@pytest.mark.usefixtures("wrong_tanh")
def test_a_finding_matching_a_known_divergence_is_known(monkeypatch: pytest.MonkeyPatch) -> None:
    planted = KnownDivergence("jax", "aten.tanh.default", "out of tolerance", "planted", "https://example.invalid")
    monkeypatch.setattr(known, "KNOWN", (planted,))
    report = run([TANH], ("jax",))
    assert [f.known for f in report.findings] == [planted]
    assert report.exit_code == 0 and report.new == []
    assert "https://example.invalid" in report.summary()


@pytest.mark.usefixtures("wrong_tanh")
def test_report_json() -> None:
    data = json.loads(json.dumps(run([TANH], ("jax",), seed=5).to_json()))
    assert set(data) == {"seed", "targets", "inductor_every", "seconds", "programs", "counts", "new_findings",
                         "known_findings", "findings"}
    assert (data["seed"], data["targets"], data["programs"], data["new_findings"]) == (5, ["jax"], 1, 1)
    assert set(data["findings"][0]) == {"program", "target", "status", "error", "ops", "source", "known"}


def test_a_run_in_which_no_program_ran_on_any_target_is_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    """Skipped is not passed: targets that cannot run here check nothing, so the run exits 2 (and stops after
    the first program every target skipped); a target that ran beside a skipped one keeps the run valid."""
    from crossgraph.compiler import tensorrt

    monkeypatch.setattr(tensorrt, "unavailable", lambda: "no CUDA device")
    report = run([TANH, TANH, TANH], ("tensorrt",))
    assert report.programs == 1 and report.counts == {"tensorrt": {"pass": 0, "fail": 0, "error": 0, "skipped": 1}}
    assert report.findings == [] and report.nothing_ran and report.exit_code == 2
    assert report.skip_reasons == {"tensorrt": "no CUDA device"}
    message = report.nothing_ran_message(["onnx", "jax"])
    assert "tensorrt: no CUDA device" in message and "--targets onnx,jax" in message and "\n" not in message
    mixed = run([TANH], ("tensorrt", "jax"))
    assert mixed.counts["jax"]["pass"] == 1 and not mixed.nothing_ran and mixed.exit_code == 0


def test_a_program_that_cannot_run_is_a_capture_finding() -> None:
    broken = Program(inputs=(Leaf("x0", (2, 3), "float32"),), params=(),
                     steps=(Step(("v0",), "torch.mm(x0, x0)", "mm"),), outputs=("v0",))
    report = run([broken], ("jax",))
    assert [(f.target, f.status) for f in report.findings] == [("capture", "error")]
    assert report.exit_code == 1


def test_known_divergences_match_the_doc() -> None:
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in DOC.read_text().splitlines() if re.match(r"\|\s*(onnx|jax|inductor)\s*\|", line)]
    documented = [KnownDivergence(t, op.strip("`"), pattern.strip("`"), reason, issue.strip("<>"))
                  for t, op, pattern, reason, issue in rows]
    assert documented == list(KNOWN)

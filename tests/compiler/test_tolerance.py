"""The tolerance policy: op families, precedence, pyproject.toml's [tool.crossgraph.parity] and --tol rules."""

import json
import operator
from pathlib import Path

import numpy as np
import pytest
import torch

from crossgraph.compiler import Tolerance, TolerancePolicy
from crossgraph.compiler.targets import TARGETS
from crossgraph.compiler.tolerance import EXACT, FAMILIES, TARGET_NAMES, op_family
from crossgraph.graphs import InputError

aten, dialect = torch.ops.aten, torch.ops.crossgraph


@pytest.mark.parametrize("op, family", [
    (aten.mm.default, "matmul"), (aten.addmm.default, "matmul"), (aten.bmm, "matmul"),
    (aten.convolution.default, "matmul"), (aten._scaled_dot_product_flash_attention_for_cpu.default, "matmul"),
    (dialect.attention.default, "matmul"), ("crossgraph::attention", "matmul"), (torch.nn.functional.linear, "matmul"),
    (aten.sum.dim_IntList, "reduction"), (aten._softmax.default, "reduction"), (aten.var_mean.correction, "reduction"),
    (aten.native_layer_norm.default, "reduction"), (aten._native_batch_norm_legit_no_training.default, "reduction"),
    (dialect.rms_norm.default, "reduction"), (dialect.add_layer_norm.default, "reduction"),
    (aten.cumsum.default, "reduction"), (aten.amax.default, "reduction"), ("aten.mean.dim", "reduction"),
    (aten.exp.default, "transcendental"), (aten.exp_.default, "transcendental"), (aten.tanh.default, "transcendental"),
    (aten.gelu.default, "transcendental"), (dialect.bias_gelu.default, "transcendental"),
    (aten.pow.Tensor_Scalar, "transcendental"), (aten.rsqrt.default, "transcendental"), ("aten::erf", "transcendental"),
    (aten.full.default, "exact"), (aten.zeros_like.default, "exact"),
    (aten.add.Tensor, "elementwise"), (aten.view.default, "elementwise"), (aten.normal.Tensor_float, "elementwise"),
    (torch.ops.prims.convert_element_type.default, "elementwise"), (aten.conv2d.default, "matmul"),
    (operator.getitem, "elementwise"), (None, "elementwise"), ("torch.ops.aten.mul.Tensor", "elementwise"),
])
def test_op_family(op: object, family: str) -> None:
    assert op_family(op) == family and family in FAMILIES


def test_target_names_are_the_targets() -> None:
    assert TARGET_NAMES == tuple(TARGETS)


def test_defaults_and_precedence() -> None:
    policy = TolerancePolicy()
    mm = aten.mm.default
    assert policy.for_output("eager", np.float32) == Tolerance(1e-5, 1e-4)  # the old two-argument call
    assert policy.for_output("eager", np.float32, op=mm) == Tolerance(1e-5, 1e-4)  # float32: one for all families
    assert policy.for_output("flax", "float32", op=mm) == Tolerance(1e-4, 1e-3)
    targeted = policy.with_rules(["onnx:float16=1,1"])
    assert targeted.for_output("onnx", np.float16, op=mm) == Tolerance(1.0, 1.0)  # target beats family
    assert targeted.for_output("jax", np.float16, op=mm) == Tolerance(5e-3, 2e-2)
    assert policy.for_output("onnx", np.float16, op=mm) == Tolerance(5e-3, 2e-2)  # family beats dtype
    assert policy.for_output("onnx", torch.bfloat16, op=aten.sum.default) == Tolerance(5e-2, 1e-1)
    assert policy.for_output("onnx", np.float16, op=aten.add.Tensor) == Tolerance(1e-3, 1e-2)
    assert policy.for_output("onnx", np.float16, op=aten.full.default) == EXACT
    assert policy.for_output("onnx", np.int64, op=mm) == EXACT
    ruled = policy.with_rules(["flax:matmul:float32=1e-2,1e-2"])
    assert ruled.for_output("flax", np.float32, op=mm) == Tolerance(1e-2, 1e-2)  # target + family beats target
    assert ruled.for_output("flax", np.float32) == Tolerance(1e-4, 1e-3)
    over = ruled.with_override(1e-7, None)
    assert over.for_output("flax", np.float32, op=mm) == Tolerance(1e-7, 1e-4)  # the override beats all
    with pytest.raises(ValueError):
        policy.with_override(-1.0, None)


def test_rules_set_entries_in_order_and_leave_the_policy_alone() -> None:
    policy = TolerancePolicy()
    ruled = policy.with_rules(["float32=1e-4,1e-3", "onnx:float32=2e-5,2e-4", "matmul:float16=2e-3,2e-2",
                               "float32=3e-4,3e-3"])
    assert ruled.for_output("eager", np.float32) == Tolerance(3e-4, 3e-3)
    assert ruled.for_output("onnx", np.float32) == Tolerance(2e-5, 2e-4)
    assert ruled.for_output("jax", np.float16, op=aten.bmm.default) == Tolerance(2e-3, 2e-2)
    assert policy.for_output("eager", np.float32) == Tolerance(1e-5, 1e-4)
    assert policy.for_output("onnx", np.float16, op=aten.bmm.default) == Tolerance(5e-3, 2e-2)
    assert policy.with_rules([]) == policy


@pytest.mark.parametrize("rule, why", [
    ("float32", "not of the form"), ("float32=1e-4", "not of the form"), ("float32=1,2,3", "not of the form"),
    ("a:b:c:float32=1,1", "not of the form"), ("float32=abc,1", "could not convert"),
    ("float32=-1,1", "'-1' is not a finite number >= 0"), ("float32=nan,1", "not a finite number"),
    ("tpu:float32=1,1", "'tpu' is neither a target"), ("matmul:onnx:float32=1,1", "'onnx' is neither"),
    ("onnx:float32", "not of the form"), ("int64=1,1", "unknown dtype 'int64'"), ("=1,1", "unknown dtype ''"),
])
def test_bad_rules_say_the_expected_form(rule: str, why: str) -> None:
    with pytest.raises(InputError) as err:
        TolerancePolicy().with_rules(["float32=1,1", rule])
    assert f"bad --tol rule '{rule}'" in str(err.value) and why in str(err.value)
    assert "[TARGET:][FAMILY:]DTYPE=ATOL,RTOL" in str(err.value)


FULL = """
[project]
name = "user-project"

[tool.crossgraph.parity]
float32 = { atol = 2e-5, rtol = 2e-4 }
bfloat16 = { atol = 1, rtol = 0 }
[tool.crossgraph.parity.families.matmul]
float16 = { atol = 2e-3, rtol = 2e-2 }
[tool.crossgraph.parity.targets.onnx]
float32 = { atol = 3e-5, rtol = 3e-4 }
[tool.crossgraph.parity.targets.onnx.families.reduction]
float16 = { atol = 4e-3, rtol = 4e-2 }
"""


def test_pyproject_refines_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text(FULL)
    policy = TolerancePolicy.from_pyproject(path)
    assert policy.source == str(path)
    assert policy.for_output("eager", np.float32) == Tolerance(2e-5, 2e-4)
    assert policy.for_output("eager", "bfloat16") == Tolerance(1.0, 0.0)
    assert policy.for_output("eager", np.float16, op=aten.mm.default) == Tolerance(2e-3, 2e-2)
    assert policy.for_output("onnx", np.float32) == Tolerance(3e-5, 3e-4)
    assert policy.for_output("onnx", np.float16, op=aten.sum.default) == Tolerance(4e-3, 4e-2)
    assert policy.for_output("jax", np.float16, op=aten.sum.default) == Tolerance(5e-3, 2e-2)  # default kept
    assert policy.for_output("flax", np.float32) == Tolerance(1e-4, 1e-3)  # default kept
    assert policy.for_output("eager", np.float64) == Tolerance(1e-9, 1e-7)  # default kept


def test_pyproject_is_found_above_the_current_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyproject.toml").write_text(FULL)
    deep = tmp_path / "src" / "pkg"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    policy = TolerancePolicy.from_pyproject()
    assert policy.source == str((tmp_path / "pyproject.toml").resolve())
    assert policy.for_output("eager", np.float32) == Tolerance(2e-5, 2e-4)


def test_pyproject_without_the_table_gives_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.crossgraph]\nother = 1\n[project]\nname = "x"\n')
    monkeypatch.chdir(tmp_path)
    assert TolerancePolicy.from_pyproject() == TolerancePolicy()
    assert TolerancePolicy.from_pyproject(tmp_path / "pyproject.toml") == TolerancePolicy()


@pytest.mark.parametrize("body, key, why", [
    ("float33 = { atol = 1, rtol = 1 }", "tool.crossgraph.parity.float33", "unknown key; expected a dtype"),
    ("int64 = { atol = 0, rtol = 0 }", "tool.crossgraph.parity.int64", "unknown key"),
    ("float32 = { atol = -1e-5, rtol = 1e-4 }", "tool.crossgraph.parity.float32.atol", "finite number >= 0"),
    ("float32 = { atol = 'small', rtol = 1e-4 }", "tool.crossgraph.parity.float32.atol", "'small'"),
    ("float32 = { atol = true, rtol = 1e-4 }", "tool.crossgraph.parity.float32.atol", "True"),
    ("float32 = { atol = inf, rtol = 1e-4 }", "tool.crossgraph.parity.float32.atol", "inf"),
    ("float32 = { atol = 1e-5 }", "tool.crossgraph.parity.float32", "needs exactly atol and rtol, got atol"),
    ("float32 = { atol = 1, rtol = 1, btol = 1 }", "tool.crossgraph.parity.float32", "got atol, btol, rtol"),
    ("float32 = 1e-5", "tool.crossgraph.parity.float32", "must be a table"),
    ("families = 3", "tool.crossgraph.parity.families", "must be a table"),
    ("families.gemm.float32 = { atol = 1, rtol = 1 }", "tool.crossgraph.parity.families.gemm", "unknown op family"),
    ("families.matmul = { atol = 1, rtol = 1 }", "tool.crossgraph.parity.families.matmul.atol", "unknown key"),
    ("targets.tpu.float32 = { atol = 1, rtol = 1 }", "tool.crossgraph.parity.targets.tpu", "unknown target"),
    ("targets.onnx = { atol = 1, rtol = 1 }", "tool.crossgraph.parity.targets.onnx.atol", "or 'families'"),
    ("targets.onnx.families.softmax.float32 = { atol = 1, rtol = 1 }",
     "tool.crossgraph.parity.targets.onnx.families.softmax", "unknown op family"),
])
def test_bad_pyproject_names_the_file_and_the_key(tmp_path: Path, body: str, key: str, why: str) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text(f"[tool.crossgraph.parity]\n{body}\n")
    with pytest.raises(InputError) as err:
        TolerancePolicy.from_pyproject(path)
    assert str(path) in str(err.value) and f"[{key}]" in str(err.value) and why in str(err.value)


def test_our_tool_table_must_be_a_table(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text('[tool]\ncrossgraph = "strict"\n')
    with pytest.raises(InputError, match=r"\[tool.crossgraph\]: must be a table"):
        TolerancePolicy.from_pyproject(path)


def test_unreadable_or_invalid_pyproject_is_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read .*missing.toml"):
        TolerancePolicy.from_pyproject(tmp_path / "missing.toml")
    bad = tmp_path / "pyproject.toml"
    bad.write_text("[tool.crossgraph.parity\n")
    with pytest.raises(InputError, match="pyproject.toml is not valid TOML"):
        TolerancePolicy.from_pyproject(bad)


def test_describe_is_json_and_shows_every_refinement(tmp_path: Path) -> None:
    path = tmp_path / "pyproject.toml"
    path.write_text(FULL)
    policy = TolerancePolicy.from_pyproject(path).with_rules(["jax:matmul:float16=1e-2,1e-1"]).with_override(1e-3, 1e-2)
    described = json.loads(json.dumps(policy.describe()))
    assert described["source"] == str(path) and described["override"] == {"atol": 1e-3, "rtol": 1e-2}
    assert described["by_dtype"]["float32"] == {"atol": 2e-5, "rtol": 2e-4}
    assert described["by_family"]["matmul"]["float16"] == {"atol": 2e-3, "rtol": 2e-2}
    assert described["by_target"]["onnx"]["float32"] == {"atol": 3e-5, "rtol": 3e-4}
    assert described["by_target_family"]["jax"]["matmul"]["float16"] == {"atol": 1e-2, "rtol": 1e-1}
    assert TolerancePolicy().describe()["source"] is None and TolerancePolicy().describe()["override"] is None

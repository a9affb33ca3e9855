"""Tolerance policy: which (atol, rtol) decides pass or fail, per output dtype, op family and target.

An element passes when |candidate - reference| <= atol + rtol * |reference| (numpy.allclose's rule).
NaN or Inf in any output never passes, whatever the tolerance. Integer and boolean outputs match exactly.

An output's tolerance is the first of: the override (`--atol/--rtol`), its target + op family + dtype, its
target + dtype, its op family + dtype (the family of the op that produced it, see `op_family`), its dtype.

Projects set their policy in pyproject.toml; every entry is optional and refines the defaults entry by entry:

    [tool.crossgraph.parity]
    float32 = { atol = 1e-5, rtol = 1e-4 }            # per dtype
    [tool.crossgraph.parity.families.matmul]
    float16 = { atol = 2e-3, rtol = 2e-2 }            # per op family and dtype
    [tool.crossgraph.parity.targets.onnx]
    float32 = { atol = 2e-5, rtol = 2e-4 }            # per target and dtype
    [tool.crossgraph.parity.targets.onnx.families.matmul]
    float16 = { atol = 4e-3, rtol = 3e-2 }            # per target, op family and dtype

Dtypes are FLOAT_DTYPES, families FAMILIES, targets TARGET_NAMES; each entry needs both atol and rtol (numbers
>= 0). On the command line, `--tol [TARGET:][FAMILY:]DTYPE=ATOL,RTOL` sets one entry the same way.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from crossgraph.graphs import InputError


@dataclasses.dataclass(frozen=True)
class Tolerance:
    """An allclose tolerance; both halves must be >= 0."""

    atol: float
    rtol: float

    def __post_init__(self) -> None:
        if not (self.atol >= 0 and self.rtol >= 0):
            raise ValueError(f"tolerances must be >= 0, got atol={self.atol}, rtol={self.rtol}")

    def to_json(self) -> dict[str, float]:
        """{"atol": ..., "rtol": ...}."""
        return {"atol": self.atol, "rtol": self.rtol}


FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")
"""The dtypes a policy can configure; every other dtype (integers, bool) is compared exactly."""
FAMILIES = ("matmul", "reduction", "transcendental", "elementwise", "exact")
TARGET_NAMES = ("eager", "inductor", "onnx", "jax", "tensorrt", "flax")
"""compiler.targets.TARGETS' names, spelled out so that reading a policy needs no runtime imported."""

EXACT = Tolerance(0.0, 0.0)
"""Integer and boolean outputs must match exactly."""

DEFAULT_BY_DTYPE: Mapping[str, Tolerance] = {
    "float64": Tolerance(1e-9, 1e-7),
    "float32": Tolerance(1e-5, 1e-4),
    "float16": Tolerance(1e-3, 1e-2),   # rtol ~ 10 ulp (eps 2**-10)
    "bfloat16": Tolerance(1e-2, 5e-2),  # rtol ~ 6 ulp (eps 2**-7)
}

# float32 and float64: one tolerance for every family, the dtype's: ~800 ulp for float32 (more for float64),
# room enough for any backend's summation order. Half precision has no such room: a matmul or a reduction sums
# K terms and backends differ in how (fp32 or half accumulators, split-K, tree or serial order), so results
# differ by ulps of the partial sums, not of the result; where the sum cancels, that dwarfs the result. So
# these two families get twice the dtype's rtol and five times its atol. Transcendentals are computed in fp32
# and rounded once to half by every backend we run: the dtype default fits them. Constants cannot differ.
DEFAULT_BY_FAMILY: Mapping[str, Mapping[str, Tolerance]] = {
    "matmul": {"float16": Tolerance(5e-3, 2e-2), "bfloat16": Tolerance(5e-2, 1e-1)},
    "reduction": {"float16": Tolerance(5e-3, 2e-2), "bfloat16": Tolerance(5e-2, 1e-1)},
    "exact": {dtype: EXACT for dtype in FLOAT_DTYPES},
}

DEFAULT_BY_TARGET: Mapping[str, Mapping[str, Tolerance]] = {
    # An independent implementation compiled by XLA: its own reduction orders, exp/tanh and matmul kernels.
    "flax": {"float32": Tolerance(1e-4, 1e-3)},
}

_MATMUL = {"mm", "bmm", "addmm", "baddbmm", "addbmm", "addmv", "addr", "mv", "matmul", "dot", "vdot", "einsum",
           "tensordot", "linear", "bilinear", "attention"}
_REDUCTION = {"sum", "nansum", "mean", "nanmean", "var", "std", "var_mean", "std_mean", "prod", "amax", "amin",
              "max", "min", "aminmax", "logsumexp", "norm", "softmax", "log_softmax", "safe_softmax", "cumsum",
              "cumprod", "logcumsumexp", "cummax", "cummin", "native_layer_norm", "native_group_norm",
              "native_batch_norm", "native_batch_norm_legit", "native_batch_norm_legit_no_training",
              "native_batch_norm_legit_functional", "trace", "dist", "cdist"}
_TRANSCENDENTAL = {"exp", "exp2", "expm1", "log", "log2", "log10", "log1p", "tanh", "sinh", "cosh", "asinh",
                   "acosh", "atanh", "erf", "erfc", "erfinv", "gelu", "bias_gelu", "sigmoid", "logit", "silu",
                   "mish", "softplus", "elu", "selu", "celu", "log_sigmoid_forward", "pow", "float_power",
                   "sqrt", "rsqrt", "sin", "cos", "tan", "asin", "acos", "atan", "atan2", "lgamma", "digamma",
                   "sinc", "xlogy"}
_EXACT = {"full", "zeros", "ones", "scalar_tensor", "eye", "full_like", "zeros_like", "ones_like", "new_full",
          "new_zeros", "new_ones"}
_NAMESPACES = {"torch", "ops", "aten", "prims", "crossgraph", "quantized"}


def op_family(op: object) -> str:
    """The family of an FX node target (an OpOverload, a crossgraph dialect op, or their names): "matmul",
    "reduction", "transcendental", "exact" (constants: no input, no rounding) or "elementwise" (the rest,
    None and data movement included: a view passes on whatever error its input has)."""
    name = _base_name(op)
    if (name in _MATMUL or "convolution" in name or name.startswith(("conv1d", "conv2d", "conv3d", "conv_t"))
            or name.startswith("scaled_dot_product") or name.endswith(("linear", "attention"))):
        return "matmul"
    if name in _REDUCTION or name.endswith("_norm") or name.startswith(("avg_pool", "adaptive_avg_pool")):
        return "reduction"
    if name in _TRANSCENDENTAL:
        return "transcendental"
    if name in _EXACT:
        return "exact"
    return "elementwise"


def _base_name(op: object) -> str:
    """"mm" from torch.ops.aten.mm.default, its packet, "aten::mm" or "aten.mm.default"; "softmax" from
    "_softmax", "exp" from "exp_"; "" for None."""
    if op is None:
        return ""
    if isinstance(op, str):
        text = op
    elif callable(getattr(op, "name", None)):  # an OpOverload: "aten::max.dim"
        text = op.name()  # type: ignore[attr-defined]
    else:  # an OpOverloadPacket ("mm") or a Python callable (operator.getitem)
        text = getattr(op, "__name__", str(op))
    parts = [p for p in re.split(r"::|\.", text) if p]
    while len(parts) > 1 and parts[0] in _NAMESPACES:
        parts = parts[1:]
    return parts[0].strip("_").lower() if parts else ""


_TABLE_KEYS = ("by_dtype", "by_family", "by_target", "by_target_family")


@dataclasses.dataclass(frozen=True)
class TolerancePolicy:
    """Tolerances per dtype, refined per op family, per target, and per target and family; `override` (from
    the CLI or a caller) wins over all of them. `source` names the pyproject.toml the policy was read from."""

    by_dtype: Mapping[str, Tolerance] = dataclasses.field(default_factory=lambda: dict(DEFAULT_BY_DTYPE))
    by_target: Mapping[str, Mapping[str, Tolerance]] = dataclasses.field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_BY_TARGET.items()})
    override: Tolerance | None = None
    by_family: Mapping[str, Mapping[str, Tolerance]] = dataclasses.field(
        default_factory=lambda: {k: dict(v) for k, v in DEFAULT_BY_FAMILY.items()})
    by_target_family: Mapping[str, Mapping[str, Mapping[str, Tolerance]]] = dataclasses.field(
        default_factory=dict)
    source: str | None = None
    user_set: frozenset[tuple[str | None, str | None, str]] = frozenset()
    """(target, family, dtype) of every entry a user set (`--tol`, pyproject.toml, with_entry): outputs those
    entries judge are judged by them alone, never widened by the float64 oracle."""

    def for_output(self, target: str, dtype: object, op: object = None) -> Tolerance:
        """The tolerance for one output of `target` with `dtype` (numpy, torch or a name), produced by `op`
        (an FX node target; None when unknown)."""
        return self._lookup(target, dtype, op)[0]

    def oracle_applies(self, target: str, dtype: object, op: object = None) -> bool:
        """Whether the float64-oracle rule may judge this output: no override, and its tolerance is a default
        (the user's own tolerances are the rule wherever they set one)."""
        return self.override is None and self._lookup(target, dtype, op)[1] not in self.user_set

    def _lookup(self, target: str, dtype: object, op: object) -> tuple[Tolerance, tuple[str | None, ...] | None]:
        """The tolerance and the (target, family, dtype) key of the entry that gave it."""
        if self.override is not None:
            return self.override, None
        name, family = _dtype_name(dtype), op_family(op)
        for key, table in (((target, family), self.by_target_family.get(target, {}).get(family, {})),
                           ((target, None), self.by_target.get(target, {})),
                           ((None, family), self.by_family.get(family, {})), ((None, None), self.by_dtype)):
            if name in table:
                return table[name], (*key, name)
        return EXACT, None

    def with_override(self, atol: float | None, rtol: float | None) -> "TolerancePolicy":
        """This policy with a fixed (atol, rtol) for every output; a missing half keeps the float32 default."""
        if atol is None and rtol is None:
            return self
        base = self.by_dtype["float32"]
        tol = Tolerance(base.atol if atol is None else atol, base.rtol if rtol is None else rtol)
        return dataclasses.replace(self, override=tol)

    def with_entry(self, dtype: str, tol: Tolerance, target: str | None = None,
                   family: str | None = None) -> "TolerancePolicy":
        """This policy with one entry set: for `dtype`, optionally only on `target` and/or `family`."""
        tables = {k: _copy(getattr(self, k)) for k in _TABLE_KEYS}
        if target and family:
            tables["by_target_family"].setdefault(target, {}).setdefault(family, {})[dtype] = tol
        elif target:
            tables["by_target"].setdefault(target, {})[dtype] = tol
        elif family:
            tables["by_family"].setdefault(family, {})[dtype] = tol
        else:
            tables["by_dtype"][dtype] = tol
        return dataclasses.replace(self, **tables, user_set=self.user_set | {(target, family, dtype)})

    def computed_in(self, dtype: str) -> "TolerancePolicy":
        """This policy for float32 outputs of a graph that computes in `dtype` (float16 or bfloat16, cast back
        at the outputs): wherever a table has an entry for `dtype`, it also judges float32."""
        tables = {k: _copy(getattr(self, k)) for k in _TABLE_KEYS}
        for table in _leaf_tables(tables):
            if dtype in table:
                table["float32"] = table[dtype]
        return dataclasses.replace(self, **tables)

    def with_rules(self, rules: Sequence[str]) -> "TolerancePolicy":
        """This policy with `--tol` rules applied in order: `[TARGET:][FAMILY:]DTYPE=ATOL,RTOL`, e.g.
        `float32=1e-4,1e-3`, `onnx:float32=2e-5,2e-4`, `matmul:float16=2e-3,2e-2`. A bad rule raises InputError."""
        policy = self
        for rule in rules:
            policy = policy.with_entry(*_parse_rule(rule))
        return policy

    @classmethod
    def from_pyproject(cls, path: str | os.PathLike[str] | None = None) -> "TolerancePolicy":
        """The defaults refined by `[tool.crossgraph.parity]` of `path`, or of the nearest pyproject.toml at or
        above the current directory when None (none there, or no such table: the defaults). Bad content raises
        InputError naming the file and the key."""
        file = Path(path) if path is not None else _nearest_pyproject(Path.cwd())
        if file is None:
            return cls()
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputError(f"cannot read {file}: {exc.strerror or exc}") from exc
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"{file} is not valid TOML: {exc}") from exc
        tool = data.get("tool")
        ours = _table(tool.get("crossgraph", {}) if isinstance(tool, dict) else {}, "tool.crossgraph", str(file))
        table = ours.get("parity")
        if table is None:
            return cls()
        policy = cls(source=str(file))
        for dtype, tol, target, family in _entries(table, str(file)):
            policy = policy.with_entry(dtype, tol, target, family)
        return policy

    def describe(self) -> dict[str, Any]:
        """The effective policy as JSON-able data, for reports: every table, the override and the source."""
        out: dict[str, Any] = {"source": self.source,
                               "override": self.override.to_json() if self.override else None}
        out["by_dtype"] = {d: t.to_json() for d, t in self.by_dtype.items()}
        out["by_family"] = {f: {d: t.to_json() for d, t in ts.items()} for f, ts in self.by_family.items()}
        out["by_target"] = {g: {d: t.to_json() for d, t in ts.items()} for g, ts in self.by_target.items()}
        out["by_target_family"] = {g: {f: {d: t.to_json() for d, t in ts.items()} for f, ts in fs.items()}
                                   for g, fs in self.by_target_family.items()}
        return out


def _copy(table: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _copy(v) if isinstance(v, Mapping) else v for k, v in table.items()}


def _leaf_tables(table: dict[str, Any]) -> list[dict[str, Any]]:
    """The dtype -> Tolerance tables nested anywhere in `table` (itself, when it is one)."""
    if all(isinstance(v, Tolerance) for v in table.values()):
        return [table]
    return [leaf for v in table.values() if isinstance(v, dict) for leaf in _leaf_tables(v)]


def _dtype_name(dtype: object) -> str:
    if isinstance(dtype, str):
        return dtype
    if type(dtype).__module__ == "torch":  # torch.float32 -> "float32", without importing torch here
        return str(dtype).removeprefix("torch.")
    return np.dtype(dtype).name  # type: ignore[call-overload]


def _nearest_pyproject(start: Path) -> Path | None:
    for folder in (start.resolve(), *start.resolve().parents):
        if (folder / "pyproject.toml").is_file():
            return folder / "pyproject.toml"
    return None


_Entry = tuple[str, Tolerance, str | None, str | None]
"""(dtype, tolerance, target, family): one entry of a policy, as with_entry takes it."""
_RULE_FORM = "[TARGET:][FAMILY:]DTYPE=ATOL,RTOL (e.g. float32=1e-4,1e-3 or onnx:matmul:float16=2e-3,2e-2)"


def _parse_rule(rule: str) -> _Entry:
    """`[TARGET:][FAMILY:]DTYPE=ATOL,RTOL` -> (dtype, tolerance, target, family)."""
    def bad(why: str) -> InputError:
        return InputError(f"bad --tol rule '{rule}': {why}; expected {_RULE_FORM}")

    where, eq, values = rule.partition("=")
    parts = [p.strip() for p in where.split(":")]
    numbers = values.split(",")
    if not eq or len(numbers) != 2 or not 1 <= len(parts) <= 3:
        raise bad("not of the form")
    *scope, dtype = parts
    target = scope.pop(0) if scope and scope[0] in TARGET_NAMES else None
    family = scope.pop(0) if scope and scope[0] in FAMILIES else None
    if scope:
        raise bad(f"'{scope[0]}' is neither a target ({', '.join(TARGET_NAMES)}) nor a family "
                  f"({', '.join(FAMILIES)}), or is out of order")
    if dtype not in FLOAT_DTYPES:
        raise bad(f"unknown dtype '{dtype}' (one of {', '.join(FLOAT_DTYPES)})")
    try:
        atol, rtol = (_number(n.strip()) for n in numbers)
    except ValueError as exc:
        raise bad(str(exc)) from exc
    return dtype, Tolerance(atol, rtol), target, family


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"'{text}' is not a finite number >= 0")
    return value


def _entries(table: Any, file: str) -> list[_Entry]:
    """Every entry of a [tool.crossgraph.parity] table, checked."""
    prefix = "tool.crossgraph.parity"
    out: list[_Entry] = []
    for key, value in _table(table, prefix, file).items():
        if key == "families":
            out += _family_entries(value, f"{prefix}.families", file, None)
        elif key == "targets":
            for target, sub in _table(value, f"{prefix}.targets", file).items():
                where = f"{prefix}.targets.{target}"
                if target not in TARGET_NAMES:
                    raise _bad(file, where, f"unknown target (one of {', '.join(TARGET_NAMES)})")
                for k, v in _table(sub, where, file).items():
                    if k == "families":
                        out += _family_entries(v, f"{where}.families", file, target)
                    else:
                        out.append((*_entry(k, v, f"{where}.{k}", file, ", or 'families'"), target, None))
        else:
            out.append((*_entry(key, value, f"{prefix}.{key}", file, ", 'families' or 'targets'"), None, None))
    return out


def _family_entries(table: Any, where: str, file: str, target: str | None) -> list[_Entry]:
    out: list[_Entry] = []
    for family, sub in _table(table, where, file).items():
        if family not in FAMILIES:
            raise _bad(file, f"{where}.{family}", f"unknown op family (one of {', '.join(FAMILIES)})")
        for dtype, value in _table(sub, f"{where}.{family}", file).items():
            out.append((*_entry(dtype, value, f"{where}.{family}.{dtype}", file), target, family))
    return out


def _entry(dtype: str, value: Any, key: str, file: str, also: str = "") -> tuple[str, Tolerance]:
    """One `DTYPE = { atol = A, rtol = R }` entry; `also` names the other keys allowed beside dtypes."""
    if dtype not in FLOAT_DTYPES:
        raise _bad(file, key, f"unknown key; expected a dtype ({', '.join(FLOAT_DTYPES)}){also}")
    fields = _table(value, key, file)
    if set(fields) != {"atol", "rtol"}:
        raise _bad(file, key, f"needs exactly atol and rtol, got {', '.join(sorted(fields)) or 'nothing'}")
    for name, number in fields.items():
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number) \
                or number < 0:
            raise _bad(file, f"{key}.{name}", f"must be a finite number >= 0, got {number!r}")
    return dtype, Tolerance(float(fields["atol"]), float(fields["rtol"]))


def _table(value: Any, key: str, file: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(file, key, f"must be a table, got {value!r}")
    return value


def _bad(file: str, key: str, why: str) -> InputError:
    return InputError(f"{file}: [{key}]: {why}")

"""`crossgraph verify DIR`: is this export whole and still the model it was?

Three checks per model file, in order, each only when the one before passed (a file whose hash is wrong is never
loaded: an Inductor package is native code): its size and sha256 against manifest.json; a load in its own runtime
(crossgraph's loaders, which vet the file first); and a run on the reference sample (reference.npz, read without
pickle), judged against the eager outputs stored beside it by the parity policy (compiler.compare, the default
TolerancePolicy, the float64 oracle where the sample has it). Exit 0 when every check passes, 1 naming the file
and the check that failed, 2 for a directory that is not a crossgraph export (InputError).
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from crossgraph.compiler.artifact import EXPORT_FORMAT, MANIFEST, file_problem
from crossgraph.graphs import InputError

SAMPLE = "reference.npz"
FILES = {"onnx": "model.onnx", "jax": "model.jax.bin", "inductor": "model.pt2", "tensorrt": "model.trt.ep"}
"""The file each target's artifact is saved as (Artifact.filename); a manifest may name no other."""

_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.int16, torch.int8,
    torch.uint8, torch.bool, torch.complex64, torch.complex128)}


@dataclasses.dataclass
class FileCheck:
    """One file's verdict: "ok", "fail" (naming the check that failed) or "skipped", with what was found."""

    file: str
    status: str
    check: str | None = None
    detail: str = ""

    def line(self, width: int) -> str:
        what = f"{self.check}: {self.detail}" if self.status == "fail" else self.detail
        return f"{self.file:<{width}}  {self.status.upper() if self.status == 'fail' else self.status:<7} {what}"


@dataclasses.dataclass
class VerifyReport:
    directory: str
    checks: list[FileCheck]

    @property
    def failed(self) -> list[FileCheck]:
        return [c for c in self.checks if c.status == "fail"]

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def text(self) -> str:
        width = max(len(c.file) for c in self.checks)
        lines = [c.line(width) for c in self.checks]
        if self.failed:
            named = "; ".join(f"{c.file}: {c.check}" for c in self.failed)
            lines.append(f"crossgraph verify {self.directory}: FAILED ({named})")
        else:
            lines.append(f"crossgraph verify {self.directory}: ok")
        return "\n".join(lines)


def verify(directory: str | Path) -> VerifyReport:
    """Check every file of the export in `directory` (see the module docstring); InputError when `directory`
    is not a crossgraph export."""
    root = Path(directory)
    manifest = _manifest(root)
    checks: list[FileCheck] = []
    artifacts = manifest.get("artifacts")
    if not isinstance(artifacts, dict) or not artifacts:
        return VerifyReport(str(root), [FileCheck(MANIFEST, "fail", "entries", "it lists no model files")])
    checks.append(FileCheck(MANIFEST, "ok", detail=f"{EXPORT_FORMAT}, {len(artifacts)} model file(s)"
                            + (f", spec {manifest['spec']}" if manifest.get("spec") else "")))
    sample, sample_check = _sample(root, manifest)
    checks.append(sample_check)
    for target, entry in artifacts.items():
        checks.append(_check_artifact(root, manifest, str(target), entry, sample))
    return VerifyReport(str(root), checks)


def _manifest(root: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise InputError(f"{root} is not a directory")
    path = root / MANIFEST
    if not path.is_file():
        raise InputError(f"{root} is not a crossgraph export: it has no {MANIFEST}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{root} is not a crossgraph export: {MANIFEST} is not JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        raise InputError(f"{root} is not a crossgraph export: {MANIFEST} has no \"format\": \"{EXPORT_FORMAT}\"")
    return manifest


@dataclasses.dataclass
class _Sample:
    inputs: list[torch.Tensor]
    outputs: list[np.ndarray]
    oracles: list[np.ndarray | None]
    output_ops: list[str | None]


def _sample(root: Path, manifest: dict[str, Any]) -> tuple[_Sample | None, FileCheck]:
    entry = manifest.get("reference_sample")
    if entry is None:
        return None, FileCheck(SAMPLE, "skipped", detail="no reference sample in this export (hashes and loads only)")
    if not isinstance(entry, dict) or entry.get("file") != SAMPLE:
        return None, FileCheck(MANIFEST, "fail", "reference sample entry", f"it must name {SAMPLE}")
    path = root / SAMPLE

    def fail(check: str, detail: str) -> tuple[None, FileCheck]:
        return None, FileCheck(SAMPLE, "fail", check, detail)

    if not path.is_file():
        return fail("present", "the manifest lists it but it is missing")
    problem = _problem(path, entry)
    if problem:
        return fail("read" if problem.startswith("cannot") else "sha256" if "sha256" in problem else "size", problem)
    try:
        in_dtypes, out_dtypes = [_dtype(d) for d in entry["inputs"]], [_dtype(d) for d in entry["outputs"]]
        with np.load(path, allow_pickle=False) as data:
            stored_in = [data[f"in_{i}"] for i in range(len(in_dtypes))]
            outputs = [data[f"out_{i}"] for i in range(len(out_dtypes))]
            oracles = [data[f"oracle_{i}"] if f"oracle_{i}" in data.files else None for i in range(len(out_dtypes))]
        inputs = [_tensor(a, d) for a, d in zip(stored_in, in_dtypes)]
        outputs = [_reference(a, d) for a, d in zip(outputs, out_dtypes)]
        ops = entry.get("output_ops")
        ops = [o if isinstance(o, str) else None for o in ops] if isinstance(ops, list) and len(
            ops) == len(outputs) else [None] * len(outputs)
    except (KeyError, TypeError, ValueError, OSError, zipfile.BadZipFile) as exc:
        return fail("read", f"not the sample its manifest entry describes ({type(exc).__name__}: {exc})")
    oracle = " and their float64 oracle" if any(o is not None for o in oracles) else ""
    return _Sample(inputs, outputs, oracles, ops), FileCheck(
        SAMPLE, "ok", detail=f"{len(inputs)} input(s), {len(outputs)} eager output(s){oracle}")


def _problem(path: Path, entry: dict[str, Any]) -> str | None:
    try:
        return file_problem(path, entry)
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"


def _dtype(name: Any) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}")
    return _DTYPES[name]


def _tensor(array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    stored = torch.float32 if dtype == torch.bfloat16 else dtype
    if str(array.dtype) != str(stored).removeprefix("torch."):
        raise ValueError(f"an input stored as {array.dtype}, the manifest says {dtype}")
    return torch.from_numpy(np.ascontiguousarray(array)).to(dtype)


def _reference(array: np.ndarray, dtype: torch.dtype) -> np.ndarray:
    tensor = _tensor(array, dtype)
    return _numpy(tensor)


def _numpy(t: torch.Tensor) -> np.ndarray:
    if t.dtype == torch.bfloat16:
        import ml_dtypes
        return t.float().numpy().astype(ml_dtypes.bfloat16)
    return t.numpy()


def _check_artifact(root: Path, manifest: dict[str, Any], target: str, entry: Any,
                    sample: _Sample | None) -> FileCheck:
    name = entry.get("file") if isinstance(entry, dict) else None
    if target not in FILES or name != FILES[target]:
        expected = f"{FILES[target]}" if target in FILES else f"a target from {', '.join(FILES)}"
        return FileCheck(MANIFEST, "fail", f"entry '{target}'", f"names file {name!r}; expected {expected}")
    path = root / name
    if not path.is_file():
        return FileCheck(name, "fail", "present", "the manifest lists it but it is missing")
    problem = _problem(path, entry)
    if problem:
        return FileCheck(name, "fail", "read" if problem.startswith("cannot") else "sha256" if "sha256" in problem
                         else "size", problem)
    done = [f"sha256 {entry['sha256'][:12]}"]
    loader = _LOADERS.get(target)
    if loader is None:
        return FileCheck(name, "ok", detail=f"{done[0]}; not loaded: crossgraph cannot load {target} files here")
    try:
        run = loader(path)
    except InputError as exc:
        return FileCheck(name, "fail", "load", str(exc))
    except Exception as exc:  # a runtime's own loader failing in a way the vetting did not foresee
        return FileCheck(name, "fail", "load", f"{type(exc).__name__}: {_first_line(exc)}")
    done.append(f"loads in {_RUNTIMES[target]}")
    if sample is None:
        return FileCheck(name, "ok", detail=", ".join(done))
    try:
        outputs = [np.asarray(o) for o in run(sample.inputs)]
    except Exception as exc:
        return FileCheck(name, "fail", "reference sample", f"the run raised {type(exc).__name__}: {_first_line(exc)}")
    verdict = _judge(target, manifest, sample, outputs)
    if not verdict.ok:
        return FileCheck(name, "fail", "reference sample", verdict.message or "out of tolerance")
    done.append(f"reference sample within tolerance (max abs err {verdict.max_abs_err:.3g}, atol {verdict.atol:g}, "
                f"rtol {verdict.rtol:g})")
    return FileCheck(name, "ok", detail=", ".join(done))


def _judge(target: str, manifest: dict[str, Any], sample: _Sample, outputs: Sequence[np.ndarray]) -> Any:
    from crossgraph.compiler.compare import compare_outputs
    from crossgraph.compiler.tolerance import TolerancePolicy

    policy = TolerancePolicy()
    declared = manifest.get("outputs")
    names = [str(o.get("name")) for o in declared] if isinstance(declared, list) and len(declared) == len(
        sample.outputs) and all(isinstance(o, dict) for o in declared) else [str(i) for i in range(len(sample.outputs))]
    tols = [policy.for_output(target, r.dtype, op) for r, op in zip(sample.outputs, sample.output_ops)]
    oracles = [o if o is not None and policy.oracle_applies(target, r.dtype, op) else None
               for o, r, op in zip(sample.oracles, sample.outputs, sample.output_ops)]
    return compare_outputs(names, sample.outputs, outputs, tols, oracles)


def _load_onnx(path: Path) -> Callable[[list[torch.Tensor]], list[np.ndarray]]:
    from crossgraph.compiler import onnx_rt

    session = onnx_rt.load(path, providers=["CPUExecutionProvider"])
    return lambda inputs: session(*(_numpy(t) for t in inputs))


def _load_jax(path: Path) -> Callable[[list[torch.Tensor]], list[np.ndarray]]:
    from crossgraph.compiler.jaxlower import artifact

    loaded = artifact.load(path)
    return lambda inputs: loaded(*inputs)


def _load_inductor(path: Path) -> Callable[[list[torch.Tensor]], list[np.ndarray]]:
    from crossgraph.compiler import inductor

    package = inductor.load(path)
    return lambda inputs: package(*inputs)


_LOADERS = {"onnx": _load_onnx, "jax": _load_jax, "inductor": _load_inductor}
_RUNTIMES = {"onnx": "ONNX Runtime", "jax": "JAX (jax.export)", "inductor": "AOTInductor"}


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:300]

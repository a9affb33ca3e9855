"""The `inductor` target: AOTInductor compiles the Graph's ExportedProgram ahead of time into one `.pt2` package
(a shared library with the weights inside). One compile serves everything: `run` calls the loaded package, `save`
copies it, and `torch._inductor.aoti_load_package` loads it in any process with the same torch, crossgraph or not.

Decisions (measured with torch 2.13 on 2 shared, busy AVX-512 cores; times are the best of 40 rounds of 10 calls):

- Frozen weights by default (`freeze=True`, Inductor's `freezing` config; it only acts under `torch.no_grad()`,
  so the compile runs there). Frozen, Inductor folds the weights as constants and prepacks every linear for oneDNN
  (`mkldnn._linear_pointwise`, residual adds fused in). Frozen vs not: GPT-2 at n_embd 768 (2 layers, batch 2 x 64
  tokens) 65 vs 123 ms, at n_embd 256 2.8 vs 3.5 ms, the 784-512-512-10 MLP at batch 32 0.29 vs 0.35 ms; only toy
  sizes lose (GPT-2 tiny, n_embd 32: 0.18 vs 0.08 ms, oneDNN call overhead). Compile time does not change, error
  against eager stays below 1e-6. `freeze=False` keeps plain aten matmuls.
- The package's own `__call__` re-checks the exported input pytree, so a Hugging Face graph (captured with
  `use_cache=False` as a constant keyword) must be called with that keyword, and it rebuilds the output pytree,
  which needs the output classes (transformers' ModelOutput) importable. `run` calls `loader.run` on the flat
  tensor inputs instead: exactly the Graph's tensor inputs in, its flat outputs in graph order out.
- The compiled code does not check its inputs (a wrong size can read out of bounds), so inputs are checked here
  first: dtype, rank, static sizes, and symbolic sizes consistent across inputs and within their ranges. The
  signature travels as JSON in the package metadata, so `load` checks too.
- Inductor's on-disk caches stay on, but torch 2.13 skips its FX graph cache in AOT mode, so every lowering
  regenerates and rebuilds the C++ (GPT-2 tiny: ~3 s codegen, ~5 s g++ for the -O1 wrapper, ~1 s for the kernels).
  The cache keeps precompiled headers and ISA probes: tiny MLP 14.5 s with an empty cache, 9 s warm.
- The library is built with -march=native: manifest `cpu_isa` records the building machine's ISA.
- crossgraph dialect ops are decomposed first (`dialect_decompositions`): attention into
  `scaled_dot_product_attention`, which Inductor lowers to its flash CPU kernel (GQA and masks included), the
  norms and bias_gelu into reference math it fuses; their Python implementations could not run inside a package.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch._inductor

from crossgraph.compiler.artifact import Artifact, as_tensor, check_manifest_hash
from crossgraph.compiler.dialect_decompositions import decompose
from crossgraph.compiler.subject import to_numpy
from crossgraph.graphs import Graph, InputError
from crossgraph.graphs.bounds import SIGNATURE_FORMAT as FORMAT
from crossgraph.graphs.bounds import Signature, signature_of
from crossgraph.graphs.errors import first_line

SIGNATURE_KEY = "crossgraph.signature"
_CODE_DIR = "data/aotinductor/model/"
_BOOKKEEPING = frozenset({"archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id"})


def unavailable() -> str | None:
    """Why AOTInductor cannot build here (it needs a C++ compiler), or None."""
    from torch._inductor.cpp_builder import get_cpp_compiler
    from torch._inductor.exc import InvalidCxxCompiler

    try:
        get_cpp_compiler()
    except InvalidCxxCompiler:
        return "AOTInductor needs a C++ compiler and found none ($CXX or g++); install g++ or set CXX"
    return None


def lower(graph: Graph, *, freeze: bool = True) -> InductorArtifact:
    """Compile `graph` into a .pt2 package and load it; `freeze` bakes the weights in as prepacked constants.
    Dialect ops are decomposed first into ATen Inductor fuses (attention: its flash CPU kernel)."""
    signature = signature_of(graph)
    program = decompose(graph, "inductor").exported
    workdir = tempfile.TemporaryDirectory(prefix="crossgraph-inductor-")
    path = Path(workdir.name) / InductorArtifact.filename
    configs = {"freezing": freeze, "aot_inductor.metadata": {SIGNATURE_KEY: json.dumps(signature)}}
    with torch.no_grad():  # Inductor freezes only inference compiles
        torch._inductor.aoti_compile_and_package(program, package_path=str(path), inductor_configs=configs)
    return InductorArtifact(graph, LoadedPackage(path, signature), workdir, frozen=freeze)


class InductorArtifact(Artifact):
    """A Graph compiled by AOTInductor; owns the package file in a temporary directory until it is collected."""

    target = "inductor"
    filename = "model.pt2"

    def __init__(self, graph: Graph, package: LoadedPackage, workdir: tempfile.TemporaryDirectory[str], *,
                 frozen: bool) -> None:
        super().__init__(graph)
        self.package = package
        self.frozen = frozen
        self._workdir = workdir

    def run(self, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
        return self.package.run(inputs)

    def write(self, path: Path) -> None:
        shutil.copyfile(self.package.path, path)

    def manifest(self) -> dict[str, Any]:
        fields = {"torch_version": torch.__version__, "aoti": True, "frozen": self.frozen,
                  "device": self.package.device.type}
        if self.package.device.type == "cpu":
            fields["cpu_isa"] = self.package.metadata.get("AOTI_CPU_ISA", "")
        return fields


class LoadedPackage:
    """A loaded package: checks inputs against its signature, runs them, returns numpy arrays in output order."""

    def __init__(self, path: Path, signature: dict[str, Any]) -> None:
        self.path = path
        self.output_names: list[str] = [str(name) for name in signature["outputs"]]
        self.signature = Signature(signature)
        self._compiled = torch._inductor.aoti_load_package(str(path))
        self.metadata: dict[str, str] = self._compiled.get_metadata()
        self.device = torch.device(self.metadata.get("AOTI_DEVICE_KEY", "cpu"))

    def __call__(self, *inputs: torch.Tensor | np.ndarray) -> list[np.ndarray]:
        return self.run([as_tensor(x) for x in inputs])

    def run(self, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
        """Check, then run on the package's device; the compiled code assumes contiguous inputs."""
        self.check(inputs)
        flat = [x.to(self.device).contiguous() for x in inputs]
        return [to_numpy(t) for t in self._compiled.loader.run(flat)]

    def check(self, inputs: Sequence[torch.Tensor]) -> None:
        """InputError unless count, dtypes, ranks and sizes match, each symbol taking one value within its range
        (graphs.bounds.Signature: the ranges are the graph's, bounded where the model bounds them)."""
        self.signature.check(inputs, "the package")


def load(path: str | os.PathLike[str]) -> LoadedPackage:
    """Load a package written by `InductorArtifact.save`; the archive is vetted first, so a corrupt or foreign file
    is an InputError and nothing in it is unpickled (the package is native code: load only packages you trust)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no Inductor package at {path}")
    check_manifest_hash(path)  # inside an export: the file its manifest.json describes, or an InputError
    signature = _read_signature(path)
    package_log = logging.getLogger("torch._inductor.package.package")
    level = package_log.level
    package_log.setLevel(logging.ERROR)  # it warns "outdated pt2 file" before any failure; the InputError says why
    try:
        return LoadedPackage(path, signature)
    except Exception as exc:  # the C++ loader raises RuntimeError with a multi-line C++ trace
        raise InputError(f"{path}: AOTInductor cannot load this package ({first_line(exc)})") from exc
    finally:
        package_log.setLevel(level)


def _read_signature(path: Path) -> dict[str, Any]:
    """The signature from the package's metadata JSON, once the archive is seen to hold only AOTInductor files."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            prefix = names[0].split("/", 1)[0] + "/" if names else ""
            inner = [name.removeprefix(prefix) for name in names]
            foreign = [name for name, rest in zip(names, inner) if not name.startswith(prefix)
                       or not (rest in _BOOKKEEPING or (rest.startswith(_CODE_DIR) and "custom_obj" not in rest))]
            if not names or foreign:
                raise InputError(f"{path} is not an AOTInductor package "
                                 f"({f'unexpected entry {foreign[0]}' if foreign else 'empty archive'})")
            if not any(rest.endswith(".so") for rest in inner):
                raise InputError(f"{path} is an AOTInductor package without a compiled library")
            metadata = [json.loads(archive.read(name)) for name in names if name.endswith("_metadata.json")]
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError, NotImplementedError) as exc:
        raise InputError(f"{path} is not an AOTInductor package ({type(exc).__name__}: {first_line(exc)})") from exc
    text = next((m[SIGNATURE_KEY] for m in metadata if isinstance(m, dict) and SIGNATURE_KEY in m), None)
    try:
        signature = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError:
        signature = None
    if not isinstance(signature, dict) or signature.get("format") != FORMAT:
        raise InputError(f"{path} is an AOTInductor package not written by crossgraph (no {FORMAT} signature)")
    return signature

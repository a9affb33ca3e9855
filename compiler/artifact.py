"""Artifact: a Graph lowered to one runtime. Callable on torch tensors or numpy arrays (returns numpy arrays in
the graph's output order); `save(dir)` writes the runtime's own file atomically.

Also the file-safety helpers every writer and loader shares: `atomic_path` (one file, whole or not at all),
`atomic_directory` (an export directory, built in a temporary sibling and renamed into place), and
`check_manifest_hash` (a loader's check that a file is the one its export's manifest.json describes).
"""

from __future__ import annotations

import abc
import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np
import torch

from crossgraph.graphs import Graph, InputError

EXPORT_FORMAT = "crossgraph.export/1"
MANIFEST = "manifest.json"


class Artifact(abc.ABC):
    """Subclasses set `target` and `filename`, and implement `run` and `write`."""

    target: ClassVar[str]
    filename: ClassVar[str]

    def __init__(self, graph: Graph) -> None:
        self.graph = graph

    def __call__(self, *inputs: torch.Tensor | np.ndarray) -> list[np.ndarray]:
        return self.run([as_tensor(x) for x in inputs])

    @abc.abstractmethod
    def run(self, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
        """Execute on the runtime; one numpy array per graph output, in order."""

    @abc.abstractmethod
    def write(self, path: Path) -> None:
        """Write the runtime's file to `path` (a temporary name; `save` moves it into place)."""

    def manifest(self) -> dict[str, Any]:
        """Target-specific manifest fields (opset, providers, ...); the exporter adds the common ones."""
        return {}

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write `directory/filename` atomically: a failed write leaves no partial file behind."""
        final = Path(directory) / self.filename
        with atomic_path(final) as tmp:
            self.write(tmp)
        return final


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A temporary path beside `final`, renamed onto it when the block succeeds and removed when it fails."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o666 & ~umask)  # mkstemp makes the file owner-only; a saved model is an ordinary file
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_manifest_hash(path: str | os.PathLike[str]) -> None:
    """InputError unless `path` matches its entry (size and sha256) in the manifest.json beside it, when there
    is a crossgraph export manifest there listing it; files outside an export are not checked. Loaders call this
    before they parse a file, so a file changed since its export is never loaded."""
    path = Path(path)
    manifest_path = path.parent / MANIFEST
    if not manifest_path.is_file():
        return
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(f"{manifest_path} is not readable JSON, so {path.name} cannot be checked against it "
                         f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != EXPORT_FORMAT:
        return
    entries = list((manifest.get("artifacts") or {}).values()) if isinstance(manifest.get("artifacts"), dict) else []
    sample = manifest.get("reference_sample")
    entries += [sample] if isinstance(sample, dict) else []
    entry = next((e for e in entries if isinstance(e, dict) and e.get("file") == path.name), None)
    if entry is None:
        return
    problem = file_problem(path, entry)
    if problem:
        raise InputError(f"{path}: {problem}; the file changed since it was exported: export it again")


def file_problem(path: Path, entry: dict[str, Any]) -> str | None:
    """Why `path` is not the file a manifest entry ({"bytes": n, "sha256": hex}) describes, or None."""
    size, digest = entry.get("bytes"), entry.get("sha256")
    if not isinstance(size, int) or not isinstance(digest, str):
        return "its manifest entry has no size or sha256"
    actual = path.stat().st_size
    if actual != size:
        return f"size {actual:,} bytes, the manifest says {size:,}"
    found = sha256(path)
    if found != digest.lower():
        return f"sha256 {found[:16]}..., the manifest says {digest[:16]}..."
    return None


_PARTIAL = re.compile(r"^\.(?P<name>.+)\.export-(?P<pid>\d+)-[A-Za-z0-9_]+\.partial$")


@contextlib.contextmanager
def atomic_directory(final: Path, *, force: bool = False) -> Iterator[Path]:
    """A temporary directory beside `final`, renamed onto it when the block succeeds and removed when it fails
    or is interrupted (KeyboardInterrupt included), so `final` holds a whole export or what it held before.

    `final` may be missing or an empty directory; a non-empty one is an InputError unless `force`, which
    replaces it whole. Temporary siblings that a killed run (SIGKILL, power loss) left behind are removed first."""
    final = Path(os.path.abspath(final))  # "." and ".." have no sibling of their own
    refuse_nonempty(final, force)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(final)
    prefix = f".{final.name}.export-{os.getpid()}-"
    try:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=final.parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it owner-only; an export is an ordinary directory
        yield tmp
        refuse_nonempty(final, force)  # something else may have filled it meanwhile
        if final.is_dir() and any(final.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=final.parent))
            try:
                os.replace(final, old)  # onto the empty directory just made
                os.replace(tmp, final)
            except BaseException:
                if not final.exists():  # moved aside, not replaced: put it back
                    os.replace(old, final)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)  # rename(2) takes an empty directory's place
    finally:  # every temporary sibling of this process, however early an interrupt came
        for sibling in final.parent.glob(f"{glob.escape(prefix)}*.partial"):
            shutil.rmtree(sibling, ignore_errors=True)


def refuse_nonempty(final: Path, force: bool) -> None:
    """InputError when `final` is a file, or a non-empty directory and not `force`."""
    if final.exists() and not final.is_dir():
        raise InputError(f"{final} is a file, not a directory")
    if not force and final.is_dir() and any(final.iterdir()):
        raise InputError(f"{final} is not empty: pass --force to replace it whole, or choose another directory")


def remove_stale_partials(final: Path) -> None:
    """Remove the temporary siblings of `final` left by runs whose process is gone."""
    try:
        siblings = list(final.parent.iterdir())
    except OSError:
        return
    for sibling in siblings:
        found = _PARTIAL.match(sibling.name)
        if found is None or found["name"] != final.name or not sibling.is_dir() or _alive(int(found["pid"])):
            continue
        shutil.rmtree(sibling, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists and is someone else's
        return True
    return True


def write_atomically(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write `data` (already fully serialized) to `path` whole or not at all."""
    final = Path(path)
    with atomic_path(final) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)
    return final


def as_tensor(x: torch.Tensor | np.ndarray) -> torch.Tensor:
    """An artifact input as a torch tensor (numpy arrays are wrapped without copying when contiguous)."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"artifact inputs must be torch tensors or numpy arrays, got {type(x).__name__}")

"""Where a graph node came from: the module path and the user's source line that produced it."""

from __future__ import annotations

import dataclasses
import os
import re
import sysconfig
import traceback
from types import TracebackType
from typing import Any

import torch

from crossgraph.graphs.annotations import Annotation

_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)\n\s*(?P<code>[^\n]*)')
_INTERNAL_DIRS = (os.path.dirname(torch.__file__) + os.sep, os.path.dirname(os.path.abspath(__file__)) + os.sep)
_STDLIB = sysconfig.get_paths()["stdlib"] + os.sep


@dataclasses.dataclass(frozen=True)
class Provenance(Annotation):
    """Source of a node: nn.Module path (may be ""), function, file, line and the line's code."""

    kind = "provenance"
    module_path: str = ""
    function: str = ""
    file: str = ""
    line: int = 0
    code: str = ""

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.file else "<unknown source>"
        mod = f"{self.module_path} " if self.module_path else ""
        return f"{mod}{where} in {self.function}" if self.function else f"{mod}{where}"


def is_internal(filename: str) -> bool:
    """True for frames of torch, the standard library and crossgraph.graphs itself (never the user's line)."""
    path = os.path.abspath(filename)
    stdlib = path.startswith(_STDLIB) and "site-packages" not in path
    return stdlib or path.startswith(_INTERNAL_DIRS) or filename.startswith("<")


def from_node_meta(meta: dict[str, Any]) -> Provenance | None:
    """Build provenance from torch.export's `stack_trace` and `nn_module_stack` node metadata."""
    module_path = ""
    stack = meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1][0]
        module_path = re.sub(r"^L\['self'\]\.?|^L__self__\.?", "", path)
    frames = [m for m in _FRAME.finditer(meta.get("stack_trace") or "") if not is_internal(m["file"])]
    if not frames and not module_path:
        return None
    if not frames:
        return Provenance(module_path=module_path)
    last = frames[-1]
    return Provenance(module_path, last["func"], last["file"], int(last["line"]), last["code"].strip())


def user_frame(tb: TracebackType | None) -> traceback.FrameSummary | None:
    """The innermost frame of a traceback that belongs to the user's code."""
    user = [f for f in traceback.extract_tb(tb) if not is_internal(f.filename)]
    return user[-1] if user else None


def python_frame_of(exc: BaseException) -> traceback.FrameSummary | None:
    """The user's frame for an exception, following its cause/context chain."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        frame = user_frame(exc.__traceback__)
        if frame is not None:
            return frame
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return None


__all__ = ["Provenance", "from_node_meta", "user_frame", "python_frame_of", "is_internal"]

"""Program: one generated model as data (leaves, steps, outputs), printed as Python and built from that print.

The source text is the program: `model()` and `example_inputs()` execute `source()`, so a finding's source is
an exact, self-contained reproducer (paste it into a file and call `Program()` on `example_inputs()`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import linecache
from typing import Any

import torch

FLOAT, INT, BOOL = "float32", "int64", "bool"
"""The dtypes generated programs compute in (int64 stays small: the jax target computes it as int32)."""

INPUT_RANGE = (-2.0, 2.0)
PARAM_RANGE = (-1.0, 1.0)
INT_RANGE = (-4, 4)
"""Where leaf values are drawn from: floats uniformly, ints uniformly from the closed range."""


@dataclasses.dataclass(frozen=True)
class Leaf:
    """A graph input (`x0`, `x1`, ...) or a module parameter (`self.w0`, ...) and how its values are drawn."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    param: bool = False

    def maker(self) -> str:
        """The Python expression that creates this leaf's values from the generator `g`."""
        shape = repr(self.shape)
        if self.dtype == FLOAT:
            lo, hi = PARAM_RANGE if self.param else INPUT_RANGE
            return f"torch.empty({shape}).uniform_({lo}, {hi}, generator=g)"
        if self.dtype == INT:
            return f"torch.randint({INT_RANGE[0]}, {INT_RANGE[1] + 1}, {shape}, generator=g)"
        return f"torch.randint(0, 2, {shape}, generator=g).bool()"


@dataclasses.dataclass(frozen=True)
class Step:
    """One line of `forward`: `outputs = expr`; `op` names what the step applies (for descriptions)."""

    outputs: tuple[str, ...]
    expr: str
    op: str


@dataclasses.dataclass(frozen=True)
class Program:
    """A generated model: its leaves, its straight-line steps and the values it returns."""

    inputs: tuple[Leaf, ...]
    params: tuple[Leaf, ...]
    steps: tuple[Step, ...]
    outputs: tuple[str, ...]
    seed: int = 0

    @property
    def ops(self) -> tuple[str, ...]:
        """The op sequence, one label per step."""
        return tuple(s.op for s in self.steps)

    def description(self) -> str:
        """The op sequence as one line, e.g. `tanh -> add -> matmul -> sum`."""
        return " -> ".join(self.ops)

    def source(self) -> str:
        """The program as a Python module defining `Program` (an nn.Module) and `example_inputs()`."""
        lines = ["import torch", "import torch.nn.functional as F", "", "",
                 "class Program(torch.nn.Module):", "    def __init__(self):", "        super().__init__()"]
        if self.params:
            lines.append(f"        g = torch.Generator().manual_seed({self.seed + 1})")
            lines += [f"        self.{p.name} = torch.nn.Parameter({p.maker()})" for p in self.params]
        lines += ["", f"    def forward(self, {', '.join(i.name for i in self.inputs)}):"]
        lines += [f"        {', '.join(s.outputs)} = {s.expr}" for s in self.steps]
        lines += [f"        return {', '.join(self.outputs)}{',' if len(self.outputs) == 1 else ''}", "", "",
                  "def example_inputs():", f"    g = torch.Generator().manual_seed({self.seed})",
                  f"    return ({''.join(i.maker() + ', ' for i in self.inputs).rstrip(' ')})", ""]
        return "\n".join(lines)

    def model(self) -> torch.nn.Module:
        """A fresh instance of the module `source()` defines."""
        return self._namespace()["Program"]()

    def example_inputs(self) -> tuple[torch.Tensor, ...]:
        """The inputs `source()` draws (the same on every call)."""
        return self._namespace()["example_inputs"]()

    def _namespace(self) -> dict[str, Any]:
        """Execute the source under a stable pseudo-file name registered with linecache, so tracebacks and
        torch.export's provenance show the program's own lines."""
        text = self.source()
        filename = f"<crossgraph-fuzz-{hashlib.sha1(text.encode()).hexdigest()[:12]}>"
        linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
        namespace: dict[str, Any] = {"__name__": "crossgraph_fuzz_program"}
        exec(compile(text, filename, "exec"), namespace)
        return namespace

"""Graph: a core-ATen ExportedProgram plus names, provenance and annotations; prints, summarizes, saves."""

from __future__ import annotations

import collections
import contextlib
import importlib
import json
import os
import pickle
import types
import zipfile
from typing import Any, Iterator, Sequence

import torch
import torch.utils._pytree as pytree
from torch.export import ExportedProgram

from crossgraph.graphs import annotations
from crossgraph.graphs.errors import InputError
from crossgraph.graphs.provenance import Provenance

FORMAT = "crossgraph.graph/1"
_META_FILE = "crossgraph.json"


def output_names_of(exported: ExportedProgram) -> list[str]:
    """Names of the flattened outputs, from the output pytree spec ("last_hidden_state", "0", "logits.1")."""
    spec = exported.call_spec.out_spec
    if spec is None or spec.num_leaves == 0:
        return []
    tree = pytree.tree_unflatten(list(range(spec.num_leaves)), spec)
    leaves, _ = pytree.tree_flatten_with_path(tree)
    if len(leaves) == 1 and not leaves[0][0]:
        return ["output"]
    return [".".join(_key_name(k) for k in path) for path, _ in leaves]


def _key_name(key: Any) -> str:
    for attr in ("key", "idx", "name"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


class Graph:
    """One captured model. Calling it runs the exported program and returns its flat list of outputs."""

    def __init__(self, exported: ExportedProgram, *, name: str, input_names: Sequence[str],
                 output_names: Sequence[str] | None = None,
                 constant_kwargs: dict[str, Any] | None = None) -> None:
        self.exported = exported
        self.name = name
        self.input_names = list(input_names)
        self.output_names = list(output_names) if output_names is not None else output_names_of(exported)
        self.constant_kwargs = dict(constant_kwargs or {})
        self._module: torch.nn.Module | None = None

    # ---- running -------------------------------------------------------------------------------------------
    def module(self) -> torch.nn.Module:
        """The exported program as a callable module (built once)."""
        if self._module is None:
            self._module = self.exported.module()
        return self._module

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """Run the program on its inputs, all positional (see `keyword_inputs`); the flat list of outputs."""
        with torch.no_grad():
            out = self.call(self.module(), inputs)
        return list(pytree.tree_leaves(out))

    # ---- calling convention ----------------------------------------------------------------------------------
    @property
    def keyword_inputs(self) -> list[str]:
        """The names of the inputs the model takes by keyword: the last of `input_names`. Every runtime takes
        all inputs positionally, in `input_names` order; the model as written takes these by name."""
        spec = self.exported.call_spec.in_spec
        if spec is None or spec.num_children < 2:
            return []
        kwargs = spec.child(1) if hasattr(spec, "child") else spec.children_specs[1]
        keys = kwargs.context or []
        return [k for k in keys if k not in self.constant_kwargs]

    def split(self, inputs: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Flat inputs (in `input_names` order) as the model's own call: (args, kwargs), constant keyword
        arguments included."""
        keyword = self.keyword_inputs
        cut = len(inputs) - len(keyword)
        return tuple(inputs[:cut]), {**dict(zip(keyword, inputs[cut:])), **self.constant_kwargs}

    def flatten(self, args: Sequence[Any], kwargs: dict[str, Any] | None = None) -> tuple[Any, ...]:
        """The model's own call (args, kwargs) as the flat inputs every runtime takes: args, then the keyword
        inputs in `keyword_inputs` order (None and constant keyword arguments left out). InputError when a
        keyword input is missing or unknown."""
        given = {k: v for k, v in (kwargs or {}).items() if v is not None and k not in self.constant_kwargs}
        keyword = self.keyword_inputs
        if set(given) != set(keyword):
            raise InputError(f"keyword inputs {sorted(given)} do not match the graph's {keyword}")
        return (*args, *(given[k] for k in keyword))

    def call(self, model: Any, inputs: Sequence[Any]) -> Any:
        """`model` (the model as written, or this program's module) called on flat `inputs` as the model is
        called: positional inputs by position, keyword inputs and constant keyword arguments by name."""
        args, kwargs = self.split(inputs)
        return model(*args, **kwargs)

    # ---- inspection ----------------------------------------------------------------------------------------
    @property
    def fx(self) -> torch.fx.Graph:
        return self.exported.graph

    def parameters(self) -> dict[str, torch.Tensor]:
        """Parameters and buffers by their names (tree paths for functional models)."""
        return dict(self.exported.state_dict)

    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.exported.state_dict.values())

    def op_histogram(self) -> collections.Counter[str]:
        """How many times each op is called."""
        return collections.Counter(str(n.target) for n in self.fx.nodes if n.op == "call_function")

    def provenance(self, node: torch.fx.Node) -> Provenance | None:
        return annotations.get(node, Provenance)

    def input_nodes(self) -> list[torch.fx.Node]:
        """Placeholders of the user inputs, in order."""
        names = set(self.exported.graph_signature.user_inputs)
        return [n for n in self.fx.nodes if n.op == "placeholder" and n.name in names]

    def dynamic_dims(self) -> dict[str, dict[int, str]]:
        """For each user input, its symbolic dimensions: {input: {dim: "s0 in [2, 64]"}}."""
        ranges = self.exported.range_constraints
        dims: dict[str, dict[int, str]] = {}
        for name, node in zip(self.input_names, self.input_nodes()):
            val = node.meta.get("val")
            for i, size in enumerate(getattr(val, "shape", ())):
                if isinstance(size, torch.SymInt):
                    expr = size.node.expr
                    vr = ranges.get(expr)
                    bound = f" in [{vr.lower}, {vr.upper}]" if vr is not None else ""
                    dims.setdefault(name, {})[i] = f"{expr}{bound}"
        return dims

    def summary(self) -> str:
        """Inputs, outputs, parameter count and op histogram, as text."""
        lines = [f"graph {self.name}: {self.num_parameters():,} parameters in "
                 f"{len(self.exported.state_dict)} tensors"]
        dyn = self.dynamic_dims()
        for name, node in zip(self.input_names, self.input_nodes()):
            lines.append(f"  input  {name}: {_describe(node.meta.get('val'))}"
                         + (f"  dynamic {dyn[name]}" if name in dyn else ""))
        outs = self.fx.output_node().args[0]
        for name, node in zip(self.output_names, outs):
            lines.append(f"  output {name}: {_describe(getattr(node, 'meta', {}).get('val'))}")
        lines.append("  ops:")
        for op, count in self.op_histogram().most_common():
            lines.append(f"    {count:5d}  {op}")
        return "\n".join(lines)

    def format(self) -> str:
        """One line per node: name = op(args)  # shape, and where it came from."""
        lines = []
        for node in self.fx.nodes:
            if node.op == "placeholder":
                text = f"%{node.name} = input"
            elif node.op == "output":
                text = f"return {node.args[0]}"
            else:
                text = f"%{node.name} = {node.target}{_args(node)}"
            note = _describe(node.meta.get("val"))
            prov = self.provenance(node)
            extra = "".join(f"  [{a.kind}: {a}]" for a in node.meta.get(annotations.META_KEY, {}).values()
                            if a.kind != Provenance.kind)
            lines.append(f"{text}{'  # ' + note if note else ''}{'  <- ' + str(prov) if prov else ''}{extra}")
        return "\n".join(lines)

    def print(self) -> None:
        print(self.format())

    def __repr__(self) -> str:
        return (f"Graph({self.name!r}, inputs={self.input_names}, outputs={self.output_names}, "
                f"nodes={len(self.fx.nodes)})")

    # ---- persistence ---------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write one .pt2 file: the exported program, annotations in node meta, names in an extra file."""
        annotations.encode(self.fx)
        meta = {"format": FORMAT, "name": self.name, "input_names": self.input_names,
                "output_names": self.output_names, "constant_kwargs": self.constant_kwargs,
                "pytree_modules": _pytree_modules(self.exported)}
        torch.export.save(self.exported, path, extra_files={_META_FILE: json.dumps(meta)})

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, trusted_modules: Sequence[str] = ()) -> "Graph":
        """Read a file written by `save`; anything else is an InputError naming the file.

        Loading runs no code from the file: every pickle in it is read weights-only (tensors and plain
        containers; anything else is refused), and the container-type modules the file names are imported only
        from TRUSTED_MODULES or `trusted_modules` (an allowlist of module prefixes the caller vouches for)."""
        if not os.path.isfile(path):
            raise InputError(f"no graph file at {path}")
        _import_pytree_modules(path, (*TRUSTED_MODULES, *trusted_modules))
        extra = {_META_FILE: ""}
        try:
            with _weights_only():
                exported = torch.export.load(path, extra_files=extra)
            meta = json.loads(extra[_META_FILE] or "{}")
        except UnsafePickle as exc:
            raise InputError(f"{path}: refusing to load it: {exc}; only load graph files from a source you trust, "
                             "or save the graph again with Graph.save") from exc
        except Exception as exc:  # torch raises many kinds here; all mean "not a graph file"
            raise InputError(f"{path} is not a saved crossgraph graph ({type(exc).__name__}: {exc})") from exc
        if meta.get("format") != FORMAT:
            raise InputError(f"{path} is a torch.export file but not a crossgraph graph (format "
                             f"{meta.get('format')!r}, expected {FORMAT!r})")
        annotations.decode(exported.graph)
        return cls(exported, name=meta["name"], input_names=meta["input_names"],
                   output_names=meta["output_names"], constant_kwargs=meta["constant_kwargs"])


TRUSTED_MODULES = ("torch", "transformers", "crossgraph")
"""Module prefixes whose container types (a Hugging Face ModelOutput) a graph file may ask `Graph.load` to
import; any other needs the caller's `trusted_modules=`. Importing a module runs its code."""


class UnsafePickle(Exception):
    """A pickle in a graph file that weights-only loading refuses (it would construct arbitrary objects)."""


@contextlib.contextmanager
def _weights_only() -> Iterator[None]:
    """While torch.export.load runs: torch.load reads weights-only whatever its caller asks (torch falls back to
    weights_only=False for sample inputs), and the raw pickle loaders its archive reader also uses refuse."""
    from torch.export.pt2_archive import _package

    original_load, original_obj = torch.load, torch._C._pickle_load_obj

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        try:
            return original_load(f, *args, **kwargs)
        except pickle.UnpicklingError as exc:
            raise UnsafePickle(f"it holds a pickle that weights-only loading refuses ({_first_line(exc)})") from exc

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise UnsafePickle("it holds a pickled object (not a tensor)")

    torch.load, torch._C._pickle_load_obj = load, refuse
    original_pickle, _package.pickle = _package.pickle, types.SimpleNamespace(loads=refuse, load=refuse)
    try:
        yield
    finally:
        torch.load, torch._C._pickle_load_obj, _package.pickle = original_load, original_obj, original_pickle


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def _pytree_modules(exported: ExportedProgram) -> list[str]:
    """The modules defining the container types of the program's inputs and outputs beyond Python's own (a
    Hugging Face model's output class): torch.export can only load the program where they are registered."""
    found, pending = set(), [s for s in (exported.call_spec.in_spec, exported.call_spec.out_spec) if s is not None]
    while pending:
        spec = pending.pop()
        module = getattr(spec.type, "__module__", "builtins")
        if spec.type is not None and module not in ("builtins", "collections"):
            found.add(module)
        pending.extend(spec.children_specs)
    return sorted(found)


def _import_pytree_modules(path: str | os.PathLike[str], trusted: Sequence[str]) -> None:
    """Import the modules `save` recorded for the file's container types, before torch.export reads it: only
    those under a `trusted` prefix; any other is an InputError naming it (importing runs the module's code)."""
    try:
        with zipfile.ZipFile(path) as archive:
            name = next((n for n in archive.namelist() if n.endswith(f"extra/{_META_FILE}")), None)
            modules = json.loads(archive.read(name)).get("pytree_modules", []) if name else []
    except (zipfile.BadZipFile, ValueError):
        return  # not a graph file: torch.export.load says so below
    for module in modules:
        if not isinstance(module, str) or not any(module == t or module.startswith(t + ".") for t in trusted):
            raise InputError(f"{path} asks to import {module!r} for its container types, which is not a trusted "
                             f"module ({', '.join(trusted)}); pass trusted_modules=[{module!r}] to Graph.load "
                             "if you trust the file")
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise InputError(f"{path} holds values of types from {module}, which cannot be imported here "
                             f"({exc}); install it to load the graph") from exc


def _describe(val: Any) -> str:
    if isinstance(val, torch.Tensor):
        dtype = str(val.dtype).removeprefix("torch.")
        return f"{dtype}[{', '.join(str(s) for s in val.shape)}]"
    if isinstance(val, (tuple, list)):
        return "(" + ", ".join(_describe(v) for v in val) + ")"
    return "" if val is None else str(val)


def _args(node: torch.fx.Node) -> str:
    def fmt(a: Any) -> str:
        return f"%{a.name}" if isinstance(a, torch.fx.Node) else repr(a)
    parts = [fmt(a) if not isinstance(a, (list, tuple)) else "[" + ", ".join(fmt(x) for x in a) + "]"
             for a in node.args]
    parts += [f"{k}={fmt(v)}" for k, v in node.kwargs.items()]
    return "(" + ", ".join(parts) + ")"

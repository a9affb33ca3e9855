"""The `onnx` target: torch.onnx's dynamo exporter (onnxscript) turns the Graph's ExportedProgram into one ONNX
file with the weights embedded and the Graph's dynamic dimensions as symbolic dim_params; ONNX Runtime runs it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from crossgraph.compiler.artifact import Artifact, check_manifest_hash
from crossgraph.compiler.subject import to_numpy
from crossgraph.graphs import Graph, InputError, UnsupportedOpError, bounds
from crossgraph.graphs.errors import first_line

try:
    import onnx
    import onnxruntime as ort
    import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter is built on it)
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    from crossgraph.compiler.onnx_dialect import TRANSLATIONS
except ImportError as _exc:
    _MISSING: str | None = f"{_exc.name or _exc} is not installed (pip install onnx onnxscript onnxruntime)"
else:
    _MISSING = None

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
"""Preferred over the CPU when this onnxruntime build has them, in ONNX Runtime's recommended order."""

MAX_EMBEDDED_BYTES = 2**31 - 1
"""Protobuf's limit on one serialized message: the most weights one self-contained .onnx file can hold."""

_NO_TRANSLATION = re.compile(r"No ONNX function found for "
                             r"<OpOverload\(op='(?P<op>[^']+)', overload='(?P<overload>[^']+)'\)>")


def unavailable() -> str | None:
    """Why the target cannot run here (onnx, onnxscript or onnxruntime not importable), or None."""
    return _MISSING


def lower(graph: Graph, *, opset: int | None = None, providers: list[str] | None = None,
          threads: int | None = None) -> OnnxArtifact:
    """Export `graph` to ONNX (default opset of the exporter unless `opset`) and open it in ONNX Runtime
    (`threads` intra-op threads; ONNX Runtime's default when None)."""
    return OnnxArtifact(graph, export(graph, opset=opset), providers, threads)


def export(graph: Graph, *, opset: int | None = None) -> onnx.ModelProto:
    """The Graph as a self-contained ONNX model whose inputs and outputs carry the Graph's names; crossgraph
    dialect ops are translated by `onnx_dialect.TRANSLATIONS` into what ONNX Runtime runs as fused kernels.

    An op the exporter cannot translate raises UnsupportedOpError naming the op and the user's source line.
    """
    with quiet_exporter():
        try:
            # outputs are named here, not by the exporter: see name_outputs
            program = torch.onnx.export(graph.exported, (), dynamo=True, input_names=graph.input_names,
                                        opset_version=opset, verbose=False, custom_translation_table=TRANSLATIONS)
        except Exception as exc:  # the exporter wraps every failure; an untranslatable op is told apart here
            unsupported = _unsupported_op(graph, exc)
            if unsupported is not None:
                raise unsupported from exc
            exc.add_note(f"crossgraph: while exporting graph '{graph.name}' to ONNX; innermost error: "
                         f"{_innermost(exc)}")
            raise
    weight_bytes = sum(v.const_value.nbytes for v in program.model.graph.initializers.values()
                       if v.const_value is not None)
    if weight_bytes > MAX_EMBEDDED_BYTES:
        raise InputError(f"graph '{graph.name}' has {weight_bytes / 2**30:.2f} GiB of weights, over the 2 GiB a "
                         "self-contained ONNX file can hold; external-data ONNX files are not supported yet")
    name_outputs(program.model, graph.output_names)
    model = program.model_proto
    model.graph.name = graph.name
    return model


class OnnxSession:
    """An ONNX model open in ONNX Runtime: called on numpy arrays (fed by input name), returns outputs in order."""

    def __init__(self, model: onnx.ModelProto, providers: Sequence[str] | None = None,
                 threads: int | None = None) -> None:
        self.model = model
        self.session = ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                            providers=choose_providers(providers))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.signature = _signature(model)

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        if len(inputs) != len(self.input_names):
            raise InputError(f"the ONNX model takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), "
                             f"got {len(inputs)}")
        if self.signature is not None:  # a size past a dim's bound fails deep inside ONNX Runtime, or not at all
            self.signature.check(inputs, "the ONNX model", dtypes=False)
        try:
            return self.session.run(self.output_names, dict(zip(self.input_names, inputs)))
        except InvalidArgument as exc:
            raise InputError(f"ONNX Runtime rejected the inputs: {first_line(exc)}") from exc

    def manifest(self) -> dict[str, Any]:
        """Opset, IR version, library versions and the providers the session really uses."""
        opset = next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), None)
        return {"opset": opset, "ir_version": self.model.ir_version, "onnx_version": onnx.__version__,
                "onnxruntime_version": ort.__version__, "providers": self.session.get_providers()}


class OnnxArtifact(Artifact):
    """A Graph lowered to ONNX: the ModelProto (`model`) and its ONNX Runtime session (`session`)."""

    target = "onnx"
    filename = "model.onnx"

    def __init__(self, graph: Graph, model: onnx.ModelProto, providers: Sequence[str] | None = None,
                 threads: int | None = None) -> None:
        super().__init__(graph)
        set_signature(model, graph)
        self.runtime = OnnxSession(model, providers, threads)

    @property
    def model(self) -> onnx.ModelProto:
        return self.runtime.model

    @property
    def session(self) -> ort.InferenceSession:
        return self.runtime.session

    def run(self, inputs: Sequence[torch.Tensor]) -> list[np.ndarray]:
        return self.runtime(*(to_numpy(t) for t in inputs))

    def write(self, path: Path) -> None:
        """One protobuf file with the weights inside (no external data)."""
        path.write_bytes(self.model.SerializeToString())

    def manifest(self) -> dict[str, Any]:
        return self.runtime.manifest()


def load(path: str | os.PathLike[str], providers: Sequence[str] | None = None) -> OnnxSession:
    """Open a saved model.onnx in ONNX Runtime; a missing, corrupt or foreign file is an InputError naming it."""
    if _MISSING:
        raise InputError(f"cannot load {path}: {_MISSING}")
    if not os.path.isfile(path):
        raise InputError(f"no ONNX model at {path}")
    check_manifest_hash(path)  # inside an export: the file its manifest.json describes, or an InputError
    chosen = choose_providers(providers)
    try:
        model = onnx.load(os.fspath(path))
        onnx.checker.check_model(model)
        return OnnxSession(model, chosen)
    except Exception as exc:  # protobuf, the checker and onnxruntime each raise their own types for a bad file
        raise InputError(f"{path} is not a loadable ONNX model ({type(exc).__name__}: {first_line(exc)})") from exc


SIGNATURE_KEY = "crossgraph.signature"
"""metadata_props key of the Graph's input signature (graphs.bounds.signature_of, as JSON): names, sizes, ranges."""


def set_signature(model: onnx.ModelProto, graph: Graph) -> None:
    """Record the graph's input signature in the model's metadata, so a loaded model checks shapes too."""
    for prop in list(model.metadata_props):
        if prop.key == SIGNATURE_KEY:
            model.metadata_props.remove(prop)
    model.metadata_props.add(key=SIGNATURE_KEY, value=json.dumps(bounds.signature_of(graph)))


def _signature(model: onnx.ModelProto) -> bounds.Signature | None:
    """The recorded input signature, None for a model without one (or one this version cannot read)."""
    text = next((p.value for p in model.metadata_props if p.key == SIGNATURE_KEY), None)
    try:
        return None if text is None else bounds.Signature(json.loads(text))
    except (ValueError, KeyError, TypeError):
        return None


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """ONNX Runtime's default session options, with the intra-op thread count set when `threads` is given."""
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = threads
    return options


def choose_providers(requested: Sequence[str] | None = None) -> list[str]:
    """`requested` if this onnxruntime has them all; by default its GPU providers first, the CPU always last."""
    available = ort.get_available_providers()
    if requested is None:
        return [p for p in GPU_PROVIDERS if p in available] + ["CPUExecutionProvider"]
    missing = [p for p in requested if p not in available]
    if missing or not requested:
        raise InputError(f"ONNX Runtime here cannot use {', '.join(missing) or 'an empty provider list'}; "
                         f"available: {', '.join(available)}")
    return list(requested)


def name_outputs(model: Any, names: Sequence[str]) -> None:
    """Name the graph outputs of `model` (an onnx_ir Model) `names`, in place, keeping every name defined once.

    The exporter's own renaming sets each output value's name, which breaks when the value cannot take it: an
    initializer (a constant-folded output) whose new name another initializer holds, one value returned twice
    (its second name overwrites its first: "Duplicate definition"), a graph input, or a name an inner value
    already holds (values are named after fx nodes, and folding or deduplication can leave the output that
    names a node pointing at another node's value). Here inner values holding a wanted name are renamed
    first, and an output value that cannot be renamed (graph input, initializer, returned twice) is returned
    through an Identity node that defines the name. Probe graphs (compiler.probe) meet all of these."""
    import onnx_ir as ir
    from onnx_ir import traversal
    graph = model.graph
    if len(names) != len(graph.outputs):
        raise ValueError(f"{len(names)} output names for {len(graph.outputs)} ONNX outputs")
    if len(set(names)) != len(names):
        raise ValueError(f"output names are not unique: {list(names)}")
    values: dict[int, Any] = {}
    for v in (*graph.inputs, *graph.initializers.values()):
        values[id(v)] = v
    for node in traversal.RecursiveGraphIterator(graph):
        for v in node.outputs:
            values[id(v)] = v
    used = {v.name for v in values.values() if v.name}
    seen: set[int] = set()
    direct: dict[int, str] = {}  # value -> the output name it takes itself
    for value, name in zip(graph.outputs, names):
        if id(value) not in seen and not value.is_graph_input() and not value.is_initializer() \
                and value.producer() is not None and value.producer().graph is graph:
            direct[id(value)] = name
        seen.add(id(value))
    wanted = set(names)

    def fresh(base: str) -> str:
        k = 1
        while f"{base}__{k}" in used or f"{base}__{k}" in wanted:
            k += 1
        used.add(f"{base}__{k}")
        return f"{base}__{k}"

    for v in values.values():  # free every wanted name held by a value that is not to take it
        if v.name in wanted and direct.get(id(v)) != v.name and not v.is_graph_input():
            v.name = fresh(v.name)
    outputs = list(graph.outputs)
    for i, (value, name) in enumerate(zip(outputs, names)):
        if direct.get(id(value)) == name:
            value.name = name
            continue
        out = ir.Value(name=name, type=value.type, shape=value.shape)
        graph.append(ir.Node("", "Identity", [value], outputs=[out]))
        graph.outputs[i] = out


def _unsupported_op(graph: Graph, exc: BaseException) -> UnsupportedOpError | None:
    """The UnsupportedOpError behind an export failure, when the exporter found no translation for an op."""
    for error in _chain(exc):
        found = _NO_TRANSLATION.search(str(error))
        if found is None:
            continue
        op = f"{found['op']}.{found['overload']}"
        # None when the op came from the exporter's own decompositions rather than from a node of the graph
        node = next((n for n in graph.fx.nodes if n.op == "call_function" and str(n.target) == op), None)
        prov = graph.provenance(node) if node is not None else None
        return UnsupportedOpError(op, "onnx", str(prov) if prov else "")
    return None


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _innermost(exc: BaseException) -> str:
    last = list(_chain(exc))[-1]
    return f"{type(last).__name__}: {first_line(last)}"


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """The exporter logs a warning per missing optional package (torchvision) on every export, and onnx_ir one per
    initializer it cannot deduplicate (every constant a probe graph returns); hold them back."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)

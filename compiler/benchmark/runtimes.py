"""What a benchmark times: crossgraph's targets (the captured Graph lowered) and the peers a user would pick
instead (the model as written, run by eager PyTorch, plain torch.compile, torch.onnx.export(dynamo=True) with
ONNX Runtime's default session options, the Flax reference under jax.jit, Torch-TensorRT).

Each runtime builds from a Case, timing its build phases, and gives back a call that runs once on inputs already
in the runtime's own form (numpy for ONNX Runtime, jax arrays for JAX) and returns numpy arrays when done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.utils._pytree as pytree

from crossgraph.compiler import flax_reference
from crossgraph.compiler.lower import unavailable as lowering_unavailable
from crossgraph.compiler.pipeline import Passes, Pipelines, passes_for
from crossgraph.compiler.subject import Subject, to_numpy
from crossgraph.graphs import FunctionalModel, Graph
from crossgraph.graphs.functional import FunctionalModule


@dataclasses.dataclass
class Case:
    """One thing to time: the model as written, its Graph captured at these inputs, the thread count, and the
    passes setting with the pipelines already run for it (shared by the targets)."""

    model: Any
    graph: Graph
    inputs: tuple[torch.Tensor, ...]
    threads: int
    passes: Passes = None
    pipelines: Pipelines | None = None

    def graph_for(self, target: str, phases: "Phases") -> Graph:
        """The graph after `target`'s passes; their time (when they first ran) is the `passes` phase."""
        pipelines = self.pipelines or Pipelines(self.graph)
        graph, phases["passes"] = pipelines.run(passes_for(target, self.passes))
        return graph

    @property
    def subject(self) -> Subject:
        return Subject(self.model, self.graph, self.inputs)


class Phases(dict[str, float]):
    """Seconds per build phase, in the order they ran."""

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - start


@dataclasses.dataclass
class Built:
    """A runtime ready to run: `call()` runs it once; `file_bytes()` the size of its saved model, if it has one."""

    call: Callable[[], list[np.ndarray]]
    phases: Phases
    file_bytes: Callable[[], int | None] = lambda: None


@dataclasses.dataclass(frozen=True)
class Runtime:
    """A named way to run a model. `policy` names the tolerance policy its outputs are held to."""

    name: str
    kind: str  # "target" (crossgraph) or "peer" (what a user would pick instead)
    description: str
    policy: str
    build: Callable[[Case], Built]
    unavailable: Callable[[Case], str | None] = lambda case: None


def _numpy_leaves(out: Any) -> list[np.ndarray]:
    return [to_numpy(t) for t in pytree.tree_leaves(out)]


def _as_module(case: Case) -> torch.nn.Module:
    """The model as an nn.Module in inference mode, the form torch.compile and torch.onnx.export take."""
    module = FunctionalModule(case.model) if isinstance(case.model, FunctionalModel) else case.model
    return module.eval()


# ---- crossgraph's targets ---------------------------------------------------------------------------------------
def _eager(case: Case) -> Built:
    phases = Phases()
    graph = case.graph_for("eager", phases)
    with phases("lower"):
        graph.module()
    return Built(lambda: [to_numpy(t) for t in graph(*case.inputs)], phases)


def _inductor(case: Case) -> Built:
    from crossgraph.compiler import inductor

    phases = Phases()
    graph = case.graph_for("inductor", phases)
    with phases("lower"):  # AOTInductor: code generation, the C++ build and loading the package
        artifact = inductor.lower(graph)
    return Built(lambda: artifact.run(case.inputs), phases, lambda: artifact.package.path.stat().st_size)


def _onnx(case: Case) -> Built:
    from crossgraph.compiler import onnx_rt

    phases = Phases()
    graph = case.graph_for("onnx", phases)
    with phases("lower"):
        model = onnx_rt.export(graph)
    with phases("compile"):  # ONNX Runtime's session: graph optimization and kernel selection
        session = onnx_rt.OnnxSession(model, threads=case.threads)
    feeds = [to_numpy(t) for t in case.inputs]
    return Built(lambda: session(*feeds), phases, model.ByteSize)


def _jax(case: Case) -> Built:
    from crossgraph.compiler import jaxlower
    from crossgraph.models.convert import tensor_to_jax

    phases = Phases()
    graph = case.graph_for("jax", phases)
    with phases("lower"):  # ATen-to-JAX translation; jax.jit compiles on the first call
        artifact = jaxlower.lower(graph)
    feeds = [tensor_to_jax(t) for t in case.inputs]
    return Built(lambda: artifact.run(feeds), phases, lambda: len(artifact.exported().serialize()))


def _tensorrt(case: Case) -> Built:
    from crossgraph.compiler import tensorrt

    phases = Phases()
    graph = case.graph_for("tensorrt", phases)
    with phases("lower"):
        artifact = tensorrt.lower(graph)
    return Built(lambda: artifact.run(case.inputs), phases)


# ---- peers: the model as written, run by the tools a user would pick instead -------------------------------------
def _torch_eager(case: Case) -> Built:
    subject = case.subject  # Subject.reference is exactly this: the model as written, under no_grad
    return Built(lambda: subject.reference(case.inputs), Phases())


def _torch_compile(case: Case) -> Built:
    phases = Phases()
    torch._dynamo.reset()  # a fresh compile per case: otherwise a second batch size recompiles with dynamic shapes
    with phases("lower"):  # compiling happens on the first call
        compiled = torch.compile(_as_module(case))

    def call() -> list[np.ndarray]:
        with torch.no_grad():
            return _numpy_leaves(case.graph.call(compiled, case.inputs))

    return Built(call, phases)


def _ort_dynamo(case: Case) -> Built:
    import onnxruntime as ort

    from crossgraph.compiler import onnx_rt

    phases = Phases()
    with phases("lower"), onnx_rt.quiet_exporter():
        args, kwargs = case.graph.split(case.inputs)
        program = torch.onnx.export(_as_module(case), args, kwargs=kwargs or None, dynamo=True, verbose=False)
        model = program.model_proto
    with phases("compile"):
        session = ort.InferenceSession(model.SerializeToString(), onnx_rt.session_options(case.threads),
                                       providers=onnx_rt.choose_providers())
    names = [i.name for i in session.get_inputs()]
    feeds = dict(zip(names, (to_numpy(t) for t in case.inputs)))
    return Built(lambda: session.run(None, feeds), phases, model.ByteSize)


def _flax_jit(case: Case) -> Built:
    import jax

    from crossgraph.models.convert import tensor_to_jax

    phases = Phases()
    with phases("lower"):  # the nnx.Module built on the converted parameters; jax.jit compiles on the first call
        fn = flax_reference.build(case.model)
    feeds = [tensor_to_jax(t) for t in case.inputs]
    return Built(lambda: [np.asarray(a) for a in jax.tree_util.tree_leaves(fn(*feeds))], phases)


def _torch_tensorrt(case: Case) -> Built:
    import copy

    import torch_tensorrt

    phases = Phases()
    inputs = [t.cuda() for t in case.inputs]
    with phases("lower"):
        module = copy.deepcopy(_as_module(case)).cuda().eval()
        compiled = torch_tensorrt.compile(module, ir="dynamo", inputs=inputs)

    def call() -> list[np.ndarray]:
        with torch.no_grad():
            return _numpy_leaves(compiled(*inputs))  # to_numpy copies to the host, which waits for the GPU

    return Built(call, phases)


TARGETS: dict[str, Runtime] = {
    "eager": Runtime("eager", "target", "the captured graph run by PyTorch", "eager", _eager),
    "inductor": Runtime("inductor", "target", "AOTInductor package (freezing on)", "inductor", _inductor,
                        lambda case: lowering_unavailable("inductor")),
    "onnx": Runtime("onnx", "target", "crossgraph's ONNX model on ONNX Runtime", "onnx", _onnx,
                    lambda case: lowering_unavailable("onnx")),
    "jax": Runtime("jax", "target", "crossgraph's ATen-to-JAX lowering under jax.jit", "jax", _jax,
                   lambda case: lowering_unavailable("jax")),
    "tensorrt": Runtime("tensorrt", "target", "crossgraph's graph through Torch-TensorRT", "tensorrt", _tensorrt,
                        lambda case: lowering_unavailable("tensorrt")),
}
"""The targets `crossgraph bench` can time (the `flax` check target is timed as the `flax-jit` peer)."""

PEERS: dict[str, Runtime] = {
    "torch-eager": Runtime("torch-eager", "peer", "the model as written, eager PyTorch", "eager", _torch_eager),
    "torch.compile": Runtime("torch.compile", "peer", "plain torch.compile (default mode)", "inductor",
                             _torch_compile, lambda case: lowering_unavailable("inductor")),
    "ort-dynamo": Runtime("ort-dynamo", "peer", "torch.onnx.export(dynamo=True), ONNX Runtime default options",
                          "onnx", _ort_dynamo, lambda case: lowering_unavailable("onnx")),
    "flax-jit": Runtime("flax-jit", "peer", "the hand-written Flax reference under jax.jit", "flax", _flax_jit,
                        lambda case: flax_reference.unavailable(case.subject) or lowering_unavailable("jax")),
    "torch-tensorrt": Runtime("torch-tensorrt", "peer", "torch_tensorrt.compile(ir='dynamo') of the model",
                              "tensorrt", _torch_tensorrt, lambda case: lowering_unavailable("tensorrt")),
}
"""The tools a user would pick instead, in report order."""

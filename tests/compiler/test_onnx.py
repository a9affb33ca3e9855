"""The onnx target: torch.onnx's dynamo export run by ONNX Runtime matches the model run eagerly, keeps the Graph's
names and dynamic dimensions, saves one self-contained file that plain onnxruntime reloads, and fails readably.

Each model is captured and exported once (export takes seconds) and shared by every test through `lowered`.
"""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from crossgraph.compiler import Comparison, TolerancePolicy, compare_outputs
from crossgraph.compiler import onnx_rt
from crossgraph.compiler.lower import lower
from crossgraph.compiler.subject import Subject
from crossgraph.graphs import Graph, InputError, UnsupportedOpError, capture
from crossgraph.models import bert, gpt2, llama, mlp
from fixtures import specs

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

SEEDS = st.integers(0, 2**16)


@dataclasses.dataclass
class Case:
    """A model, the inputs it is captured at (with `dynamic`), the inputs parity is checked at, and a strategy
    for inputs at other shapes inside the dynamic ranges (None when captured static)."""

    model: Any
    capture_inputs: tuple[torch.Tensor, ...]
    dynamic: Any
    check_inputs: tuple[torch.Tensor, ...]
    other_shapes: st.SearchStrategy[tuple[torch.Tensor, ...]] | None


@dataclasses.dataclass
class Lowered:
    """A case captured, lowered and saved; `ops` is the Graph's op histogram before lowering."""

    case: Case
    graph: Graph
    ops: dict[str, int]
    artifact: onnx_rt.OnnxArtifact
    saved: Path


def _gpt2() -> Case:
    model, inputs = gpt2.tiny()
    c = model.config
    return Case(model, inputs, gpt2.dynamic_shapes(c), inputs,
                st.builds(lambda b, t, s: gpt2.example_inputs(c, b, t, s), st.integers(1, 4),
                          st.integers(1, c.n_positions), SEEDS))


def _mlp() -> Case:
    model, inputs = mlp.tiny()
    c = model.config
    return Case(model, inputs, mlp.dynamic_shapes(c), inputs,
                st.builds(lambda b, s: mlp.example_inputs(c, b, s), st.integers(1, 64), SEEDS))


def _llama() -> Case:
    model, inputs = llama.tiny()
    c = model.config
    return Case(model, inputs, llama.dynamic_shapes(c), inputs,
                st.builds(lambda b, t, s: llama.example_inputs(c, b, t, s), st.integers(1, 4),
                          st.integers(1, c.max_position_embeddings), SEEDS))


def _llama_with_cache() -> Case:
    """Captured at sequence 3 (torch.export specializes a size-1 sequence), checked at the factory's decode step."""
    model, inputs = llama.tiny_with_cache()
    c = model.config

    @st.composite
    def step(draw: st.DrawFn) -> tuple[torch.Tensor, ...]:
        seq = draw(st.integers(1, 8))
        past = draw(st.integers(0, c.max_position_embeddings - seq))
        return llama.example_inputs_with_cache(c, draw(st.integers(1, 3)), seq, past, draw(SEEDS))

    return Case(model, llama.example_inputs_with_cache(c, batch=2, seq=3, past=5),
                llama.dynamic_shapes_with_cache(c), inputs, step())


def _bert() -> Case:
    model, inputs = bert.tiny()
    c = model.config
    return Case(model, inputs, bert.dynamic_shapes(c), inputs,
                st.builds(lambda b, t, s: bert.example_inputs(c, b, t, s), st.integers(1, 4),
                          st.integers(1, c.max_position_embeddings), SEEDS))


def _resnet() -> Case:
    """Captured at batch 2 (torch.export specializes batch 1), checked at the factory's batch 1."""
    resnet = pytest.importorskip("crossgraph.models.resnet")
    model, inputs = resnet.tiny()
    c = model.config
    side = st.integers(2, 6).map(lambda blocks: blocks * c.stride)
    return Case(model, resnet.example_inputs(c, batch=2), resnet.dynamic_shapes(c), inputs,
                st.builds(lambda b, h, w, s: resnet.example_inputs(c, b, s, h, w), st.integers(1, 3), side, side,
                          SEEDS))


def _vit() -> Case:
    """Captured at batch 2 (torch.export specializes batch 1), checked at the factory's batch 1."""
    vit = pytest.importorskip("crossgraph.models.vit")
    model, inputs = vit.tiny()
    c = model.config
    return Case(model, vit.example_inputs(c, batch=2), vit.dynamic_shapes(c), inputs,
                st.builds(lambda b, s: vit.example_inputs(c, b, s), st.integers(1, 8), SEEDS))


def _hf_gpt2() -> Case:
    model, inputs = specs.hf_gpt2()
    return Case(model, inputs, None, inputs, None)


CASES: dict[str, Callable[[], Case]] = {"gpt2": _gpt2, "mlp": _mlp, "llama": _llama,
                                        "llama_with_cache": _llama_with_cache, "bert": _bert, "resnet": _resnet,
                                        "vit": _vit, "hf_gpt2": _hf_gpt2}
DYNAMIC = [name for name in CASES if name != "hf_gpt2"]


@pytest.fixture(scope="module")
def lowered(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Lowered]:
    """Capture, export and save each model once for the whole module, on first use."""
    built: dict[str, Lowered] = {}

    def get(name: str) -> Lowered:
        if name not in built:
            case = CASES[name]()
            graph = capture(case.model, case.capture_inputs, case.dynamic)
            ops = dict(graph.op_histogram())
            artifact = lower(graph, "onnx")
            built[name] = Lowered(case, graph, ops, artifact, artifact.save(tmp_path_factory.mktemp(name)))
        return built[name]

    return get


def _against_model(model: Any, graph: Graph, inputs: tuple[torch.Tensor, ...],
                   outputs: list[np.ndarray]) -> Comparison:
    """ONNX outputs against the model run eagerly as written, under the `onnx` tolerance policy."""
    refs = Subject(model, graph, inputs).reference(inputs)
    policy = TolerancePolicy()
    return compare_outputs(graph.output_names, refs, outputs, [policy.for_output("onnx", r.dtype) for r in refs])


@pytest.mark.parametrize("name", list(CASES))
def test_matches_model_run_eagerly(lowered: Callable[[str], Lowered], name: str) -> None:
    low = lowered(name)
    verdict = _against_model(low.case.model, low.graph, low.case.check_inputs, low.artifact(*low.case.check_inputs))
    assert verdict.ok, verdict.message


@pytest.mark.parametrize("name", list(CASES))
def test_model_is_valid_named_and_keeps_dynamic_dims(lowered: Callable[[str], Lowered], name: str) -> None:
    """Full checker pass; the Graph's names; a symbolic dim_param exactly where the Graph is dynamic."""
    low = lowered(name)
    model = low.artifact.model
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == low.graph.input_names
    assert [o.name for o in model.graph.output] == low.graph.output_names
    dynamic = low.graph.dynamic_dims()
    for value, example in zip(model.graph.input, low.case.capture_inputs, strict=True):
        symbolic = {i: expr.split(" in ")[0] for i, expr in dynamic.get(value.name, {}).items()}
        dims = value.type.tensor_type.shape.dim
        assert {i: d.dim_param for i, d in enumerate(dims) if d.dim_param} == symbolic
        assert [d.dim_value for i, d in enumerate(dims) if i not in symbolic] == \
               [n for i, n in enumerate(example.shape) if i not in symbolic]
    assert dict(low.graph.op_histogram()) == low.ops, "exporting changed the Graph"


def test_hugging_face_model_takes_only_its_tensor_inputs(lowered: Callable[[str], Lowered]) -> None:
    """use_cache=False was a constant kwarg of the capture: the ONNX model takes input_ids alone."""
    low = lowered("hf_gpt2")
    assert low.graph.constant_kwargs == {"use_cache": False}
    assert [i.name for i in low.artifact.model.graph.input] == ["input_ids"]
    assert low.artifact.model.graph.output[0].name == "last_hidden_state"


@pytest.mark.parametrize("name", DYNAMIC)
def test_saved_artifact_matches_at_shapes_inside_dynamic_ranges(lowered: Callable[[str], Lowered],
                                                                name: str) -> None:
    low = lowered(name)
    session = onnx_rt.load(low.saved)

    @given(low.case.other_shapes)
    def check(inputs: tuple[torch.Tensor, ...]) -> None:
        verdict = _against_model(low.case.model, low.graph, inputs, session(*(t.numpy() for t in inputs)))
        assert verdict.ok, f"at shapes {[tuple(t.shape) for t in inputs]}: {verdict.message}"

    check()


def test_saved_file_is_self_contained(lowered: Callable[[str], Lowered]) -> None:
    low = lowered("gpt2")
    assert sorted(p.name for p in low.saved.parent.iterdir()) == ["model.onnx"]
    model = onnx.load(str(low.saved))
    assert model.graph.initializer and all(t.data_location == onnx.TensorProto.DEFAULT and not t.external_data
                                           for t in model.graph.initializer)
    assert model.graph.name == low.graph.name


RELOAD = textwrap.dedent("""
    import sys
    import numpy as np
    import onnxruntime as ort
    for path in sys.argv[1:]:
        session = ort.InferenceSession(path + "/model.onnx", providers=["CPUExecutionProvider"])
        feed = dict(np.load(path + "/inputs.npz"))
        np.savez(path + "/outputs.npz", *session.run(None, feed))
    assert not [m for m in sys.modules if m.split(".")[0] in ("crossgraph", "torch")], "imported more than ORT"
""")


def test_reload_in_fresh_process_with_only_onnxruntime(lowered: Callable[[str], Lowered]) -> None:
    """A new interpreter that imports only onnxruntime and numpy gives the same outputs as the artifact."""
    runs = [lowered(name) for name in ("gpt2", "llama_with_cache", "bert")]
    for low in runs:
        np.savez(low.saved.parent / "inputs.npz",
                 **{n: t.numpy() for n, t in zip(low.graph.input_names, low.case.check_inputs)})
    done = subprocess.run([sys.executable, "-I", "-c", RELOAD, *(str(low.saved.parent) for low in runs)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for low in runs:
        expected = onnx_rt.load(low.saved, ["CPUExecutionProvider"])(*(t.numpy() for t in low.case.check_inputs))
        with np.load(low.saved.parent / "outputs.npz") as got:
            for i, want in enumerate(expected):
                np.testing.assert_array_equal(got[f"arr_{i}"], want)


def test_manifest_names_versions_and_providers(lowered: Callable[[str], Lowered]) -> None:
    artifact = lowered("mlp").artifact
    manifest = artifact.manifest()
    assert manifest == {"opset": manifest["opset"], "ir_version": artifact.model.ir_version,
                        "onnx_version": onnx.__version__, "onnxruntime_version": onnxruntime.__version__,
                        "providers": artifact.session.get_providers()}
    assert manifest["opset"] >= 18 and manifest["providers"][-1] == "CPUExecutionProvider"
    assert onnx_rt.choose_providers()[-1] == "CPUExecutionProvider"
    with pytest.raises(InputError, match="NoSuchExecutionProvider"):
        onnx_rt.choose_providers(["NoSuchExecutionProvider"])


def test_opset_option_is_honoured() -> None:
    model, inputs = mlp.tiny()
    artifact = lower(capture(model, inputs), "onnx", opset=18)
    assert artifact.manifest()["opset"] == 18
    assert _against_model(model, artifact.graph, inputs, artifact(*inputs)).ok


def test_bad_inputs_are_input_errors(lowered: Callable[[str], Lowered]) -> None:
    artifact = lowered("mlp").artifact
    with pytest.raises(InputError, match="takes 1 inputs"):
        artifact(torch.randn(2, 16), torch.randn(2, 16))
    with pytest.raises(InputError, match=r"input 'x' has shape \(2, 16, 1\); the ONNX model takes \[s\d+, 16\]"):
        artifact(torch.randn(2, 16, 1))  # checked against the graph's signature first
    with pytest.raises(InputError, match="ONNX Runtime rejected the inputs"):
        artifact(torch.randn(2, 16, dtype=torch.float64))


def test_other_export_failures_propagate_with_the_innermost_cause(lowered: Callable[[str], Lowered],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: Any, **kwargs: Any) -> None:
        try:
            raise ValueError("shape inference went wrong")
        except ValueError as inner:
            raise RuntimeError("Failed to convert the exported program to an ONNX model.") from inner

    monkeypatch.setattr(torch.onnx, "export", fail)
    with pytest.raises(RuntimeError, match="Failed to convert") as err:
        onnx_rt.export(lowered("mlp").graph)
    assert "'mlp' to ONNX; innermost error: ValueError: shape inference went wrong" in err.value.__notes__[0]


@pytest.mark.parametrize("content", ["truncated", "garbage", "text", "empty", "missing"])
def test_corrupt_or_foreign_file_is_input_error(lowered: Callable[[str], Lowered], tmp_path: Path,
                                                content: str) -> None:
    path = tmp_path / "model.onnx"
    good = lowered("mlp").saved.read_bytes()
    data = {"truncated": good[: len(good) // 2], "garbage": bytes(range(256)) * 8,
            "text": b'{"format": "crossgraph.graph/1"}\n', "empty": b""}
    if content in data:
        path.write_bytes(data[content])
    with pytest.raises(InputError) as err:
        onnx_rt.load(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@torch.library.custom_op("crossgraph_test::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    """An op no ONNX translation exists for."""
    return x * 3


@mystery.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


class UsesMystery(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mystery(x + 1)  # the line UnsupportedOpError must name


def test_untranslatable_op_names_op_target_and_source_line() -> None:
    graph = capture(UsesMystery(), (torch.randn(3),))
    with pytest.raises(UnsupportedOpError) as err:
        lower(graph, "onnx")
    line = inspect.getsourcelines(UsesMystery.forward)[1] + 1
    assert (err.value.op, err.value.target) == ("crossgraph_test.mystery.default", "onnx")
    assert f"{Path(__file__).name}:{line}" in err.value.where and "crossgraph_test.mystery" in str(err.value)

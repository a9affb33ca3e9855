"""The inductor target: parity with the eager model, dynamic shapes, save and reload, bad files and bad inputs.

Each AOTInductor compile takes seconds, so every model is captured and compiled once for the whole module.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch

from crossgraph.compiler import TolerancePolicy, compare_outputs, inductor
from crossgraph.compiler.lower import lower
from crossgraph.compiler.subject import Subject
from crossgraph.graphs import Graph, InputError, capture
from crossgraph.models import bert, gpt2, llama, mlp
from fixtures import specs

pytestmark = pytest.mark.skipif(inductor.unavailable() is not None, reason=str(inductor.unavailable()))


@dataclasses.dataclass
class Case:
    """A model, its example inputs and dynamic shapes, and inputs at other shapes inside the dynamic ranges."""

    model: Any
    inputs: tuple[torch.Tensor, ...]
    dynamic: Any = None
    others: list[tuple[torch.Tensor, ...]] = dataclasses.field(default_factory=list)
    freeze: bool = True


def _mlp() -> Case:
    c = mlp.MLPConfig.tiny()
    return Case(mlp.model(c), mlp.example_inputs(c), mlp.dynamic_shapes(c),
                [mlp.example_inputs(c, batch=1, seed=1), mlp.example_inputs(c, batch=9, seed=2)])


def _gpt2() -> Case:
    c = gpt2.GPT2Config.tiny()
    others = [gpt2.example_inputs(c, batch=b, seq=t, seed=i) for i, (b, t) in enumerate([(1, 1), (3, 17), (1, 64)])]
    return Case(gpt2.model(c), gpt2.example_inputs(c), gpt2.dynamic_shapes(c), others)


def _llama() -> Case:
    c = llama.LlamaConfig.tiny()
    return Case(llama.model(c), llama.example_inputs(c), llama.dynamic_shapes(c),
                [llama.example_inputs(c, batch=1, seq=5, seed=1)])


def _bert() -> Case:
    c = bert.BertConfig.tiny()
    return Case(bert.model(c), bert.example_inputs(c), bert.dynamic_shapes(c),
                [bert.example_inputs(c, batch=3, seq=5, seed=1)])


def _resnet() -> Case:
    resnet = pytest.importorskip("crossgraph.models.resnet")
    c = resnet.ResNetConfig.tiny()
    return Case(resnet.model(c), resnet.example_inputs(c, batch=2), resnet.dynamic_shapes(c),
                [resnet.example_inputs(c, batch=3, seed=1, height=2 * c.stride, width=3 * c.stride)])


def _vit() -> Case:
    vit = pytest.importorskip("crossgraph.models.vit")
    c = vit.ViTConfig.tiny()
    return Case(vit.model(c), vit.example_inputs(c, batch=2), vit.dynamic_shapes(c),
                [vit.example_inputs(c, batch=3, seed=1)])


def _hf_gpt2() -> Case:
    """Hugging Face GPT-2: captured with use_cache=False baked in; also the one unfrozen compile."""
    model, inputs = specs.hf_gpt2()
    return Case(model, inputs, freeze=False)


CASES: dict[str, Callable[[], Case]] = {"mlp": _mlp, "gpt2": _gpt2, "llama": _llama, "bert": _bert,
                                        "resnet": _resnet, "vit": _vit, "hf_gpt2": _hf_gpt2}


@dataclasses.dataclass
class Lowered:
    """A case with its captured graph, its compiled artifact and how long the compile took."""

    case: Case
    graph: Graph
    artifact: inductor.InductorArtifact
    compile_seconds: float


@pytest.fixture(scope="module")
def lowered() -> Callable[[str], Lowered]:
    """Capture and compile each model on first use, once for the module."""
    cache: dict[str, Lowered] = {}

    def get(name: str) -> Lowered:
        if name not in cache:
            case = CASES[name]()
            graph = capture(case.model, case.inputs, dynamic_shapes=case.dynamic)
            start = time.perf_counter()
            artifact = lower(graph, "inductor", freeze=case.freeze)
            cache[name] = Lowered(case, graph, artifact, time.perf_counter() - start)
            print(f"\ninductor compile {name}: {cache[name].compile_seconds:.1f}s")
        return cache[name]

    return get


def _assert_parity(low: Lowered, inputs: tuple[torch.Tensor, ...]) -> None:
    refs = Subject(low.case.model, low.graph, inputs).reference(inputs)
    cands = low.artifact(*inputs)
    policy = TolerancePolicy()
    verdict = compare_outputs(low.graph.output_names, refs, cands,
                              [policy.for_output("inductor", r.dtype) for r in refs])
    print(f"inductor parity {low.graph.name} {[tuple(x.shape) for x in inputs]}: "
          f"max abs {verdict.max_abs_err:.2e}, max rel {verdict.max_rel_err:.2e}")
    assert verdict.ok, verdict.message


@pytest.mark.parametrize("name", list(CASES))
def test_parity_with_eager_model(lowered: Callable[[str], Lowered], name: str) -> None:
    low = lowered(name)
    _assert_parity(low, low.case.inputs)


@pytest.mark.parametrize("name", [n for n in CASES if n != "hf_gpt2"])
def test_dynamic_package_runs_at_other_shapes(lowered: Callable[[str], Lowered], name: str) -> None:
    low = lowered(name)
    assert low.graph.dynamic_dims(), "the capture should have symbolic dimensions"
    for inputs in low.case.others:
        _assert_parity(low, inputs)


def test_hugging_face_graph_takes_exactly_its_tensor_inputs(lowered: Callable[[str], Lowered]) -> None:
    low = lowered("hf_gpt2")
    assert low.graph.constant_kwargs == {"use_cache": False}
    (out,) = low.artifact(*low.case.inputs)
    assert out.shape == (2, 8, 32)
    assert low.artifact.manifest()["frozen"] is False


def test_manifest(lowered: Callable[[str], Lowered]) -> None:
    manifest = lowered("mlp").artifact.manifest()
    assert manifest.pop("cpu_isa")
    assert manifest == {"torch_version": torch.__version__, "aoti": True, "frozen": True, "device": "cpu"}


def test_saved_package_runs_in_a_fresh_process_without_crossgraph(lowered: Callable[[str], Lowered],
                                                                 tmp_path: Path) -> None:
    artifact = lowered("mlp").artifact
    path = artifact.save(tmp_path / "export")
    assert path == tmp_path / "export" / "model.pt2" and sorted(os.listdir(path.parent)) == ["model.pt2"]
    (x,) = mlp.example_inputs(mlp.MLPConfig.tiny(), batch=5, seed=3)
    np.save(tmp_path / "x.npy", x.numpy())
    script = textwrap.dedent("""
        import sys
        import numpy as np
        import torch
        import torch._inductor
        package = torch._inductor.aoti_load_package(sys.argv[1])
        np.save(sys.argv[3], package(torch.from_numpy(np.load(sys.argv[2]))).numpy())
        assert not [m for m in sys.modules if m.startswith("crossgraph")], "crossgraph was imported"
    """)
    done = subprocess.run([sys.executable, "-c", script, str(path), "x.npy", "out.npy"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), artifact(x)[0])


def test_load_runs_a_saved_package(lowered: Callable[[str], Lowered], tmp_path: Path) -> None:
    low = lowered("mlp")
    package = inductor.load(low.artifact.save(tmp_path))
    (x,) = mlp.example_inputs(mlp.MLPConfig.tiny(), batch=6, seed=4)
    assert package.output_names == low.graph.output_names
    np.testing.assert_array_equal(package(x.numpy())[0], low.artifact(x)[0])
    with pytest.raises(InputError, match="input 'x' is float64; the package takes float32"):
        package(x.double())


def _bad_inputs() -> dict[str, tuple[str, Callable[[], tuple[torch.Tensor, ...]], str]]:
    m, g, b = mlp.MLPConfig.tiny(), gpt2.GPT2Config.tiny(), bert.BertConfig.tiny()
    ids, mask, types = bert.example_inputs(b)
    return {
        "count": ("mlp", lambda: (torch.randn(4, 16), torch.randn(4, 16)), "2 inputs given; the package takes 1"),
        "dtype": ("gpt2", lambda: (torch.zeros(2, 8, dtype=torch.int32),), "is int32; the package takes int64"),
        "rank": ("mlp", lambda: (torch.randn(16),), r"has shape \(16,\); the package takes \[s\d+, 16\]"),
        "static size": ("mlp", lambda: (torch.randn(4, m.in_features + 1),), r"has shape \(4, 17\)"),
        "above range": ("gpt2", lambda: (torch.zeros(2, g.n_positions + 1, dtype=torch.int64),),
                        r"'input_ids' dim 1 is 65, above its bound 64: .* in \[1, 64\]"),
        "inconsistent": ("bert", lambda: (ids, mask[:, :-1], types), r"'attention_mask' has shape \(2, 7\).* = 8"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_bad_inputs_raise_input_error(lowered: Callable[[str], Lowered], case: str) -> None:
    name, make, message = _bad_inputs()[case]
    with pytest.raises(InputError, match=message) as err:
        lowered(name).artifact(*make())
    assert "\n" not in str(err.value)


def test_resnet_sizes_must_be_multiples_of_the_stride(lowered: Callable[[str], Lowered]) -> None:
    low = lowered("resnet")
    (images,) = low.case.inputs
    with pytest.raises(InputError, match=r"has shape \(2, 3, 30, 32\); the package takes \[s\d+, 3, 8\*s\d+"):
        low.artifact(images[:, :, :30])


def _rewrite(package: Path, out: Path, change: Callable[[str, bytes], bytes]) -> Path:
    """A copy of the package zip with each entry's bytes passed through `change(name, data)`."""
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            dst.writestr(name, change(name, src.read(name)))
    return out


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _foreign_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("other/data.pkl", pickle.dumps({"weights": [1, 2, 3]}))
    return path


def _graph_file(graph: Graph, path: Path) -> Path:
    graph.save(path)
    return path


BAD_FILES: dict[str, Callable[[Path, Graph, Path], Path]] = {
    "missing": lambda good, graph, tmp: tmp / "missing.pt2",
    "random bytes": lambda good, graph, tmp: _write(tmp / "random.pt2", os.urandom(4096)),
    "truncated": lambda good, graph, tmp: _write(tmp / "truncated.pt2", good.read_bytes()[: good.stat().st_size // 2]),
    "torch.export graph": lambda good, graph, tmp: _graph_file(graph, tmp / "graph.pt2"),
    "foreign zip with a pickle": lambda good, graph, tmp: _foreign_zip(tmp / "other.pt2"),
    "no crossgraph signature": lambda good, graph, tmp: _rewrite(good, tmp / "unsigned.pt2", lambda n, d: (
        b'{"AOTI_DEVICE_KEY": "cpu"}' if n.endswith("_metadata.json") else d)),
    "broken library": lambda good, graph, tmp: _rewrite(good, tmp / "broken.pt2", lambda n, d: (
        os.urandom(len(d)) if n.endswith(".so") else d)),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_corrupt_or_foreign_file_raises_input_error(lowered: Callable[[str], Lowered], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    low = lowered("mlp")
    path = BAD_FILES[kind](low.artifact.save(tmp_path / "good"), low.graph, tmp_path)
    unpickled: list[str] = []
    for module, attr in [(pickle, "load"), (pickle, "loads"), (torch, "load")]:
        monkeypatch.setattr(module, attr, lambda *a, _n=f"{module.__name__}.{attr}", **k: unpickled.append(_n))
    monkeypatch.setattr(pickle, "Unpickler", lambda *a, **k: unpickled.append("pickle.Unpickler"))
    with pytest.raises(InputError) as err:
        inductor.load(path)
    print(f"inductor load {kind}: {err.value}")
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not unpickled


def test_unavailable_without_a_cpp_compiler() -> None:
    assert inductor.unavailable() is None
    # config.patch restores the setting; monkeypatch's undo deletes it from Inductor's config module instead
    with torch._inductor.config.patch({"cpp.cxx": ("no-such-compiler++",)}):
        assert "C++ compiler" in str(inductor.unavailable())
    assert torch._inductor.config.cpp.cxx != ("no-such-compiler++",)
    assert inductor.unavailable() is None

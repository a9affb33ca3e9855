"""Graph save/load round trips (outputs, names, dynamic dims, annotations) and the printed forms."""

import dataclasses
import io
import json
import subprocess
import zipfile
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given, strategies as st

from crossgraph.graphs import (Annotation, Graph, InputError, Mesh, Provenance, Sharding, capture, flatten_tree,
                               unflatten_tree)
from crossgraph.graphs import annotations
from crossgraph.models import gpt2, hf, mlp


@dataclasses.dataclass(frozen=True)
class Note(Annotation):
    """A test-only annotation kind, to prove typed annotations survive save/load."""

    kind = "test-note"
    text: str = ""


def test_save_load_gives_identical_outputs_and_keeps_dynamism(tmp_path: Path) -> None:
    model, inputs = gpt2.tiny()
    graph = capture(model, inputs, gpt2.dynamic_shapes(model.config))
    path = tmp_path / "gpt2.pt2"
    graph.save(path)
    loaded = Graph.load(path)
    assert loaded.name == "gpt2" and loaded.input_names == ["input_ids"]
    assert loaded.output_names == graph.output_names
    assert loaded.dynamic_dims() == graph.dynamic_dims()
    for batch, seq in [(2, 8), (1, 3), (4, 20)]:
        ids = gpt2.example_inputs(model.config, batch, seq, seed=seq)[0]
        assert torch.equal(loaded(ids)[0], graph(ids)[0])


def test_annotations_survive_save_load(tmp_path: Path) -> None:
    graph = capture(*mlp.tiny())
    target = next(n for n in graph.fx.nodes if n.op == "call_function")
    annotations.put(target, Note("keep me"))
    graph.save(tmp_path / "g.pt2")
    loaded = Graph.load(tmp_path / "g.pt2")
    node = next(n for n in loaded.fx.nodes if n.name == target.name)
    assert annotations.get(node, Note) == Note("keep me")
    assert isinstance(loaded.provenance(node), Provenance)
    assert loaded.provenance(node) == graph.provenance(target)


def test_placeholder_annotations_survive_save_load(tmp_path: Path) -> None:
    """torch.export keeps no placeholder meta; a weight's or an input's annotations travel in the module's."""
    graph = capture(*mlp.tiny())
    weight, data = graph.fx.find_nodes(op="placeholder")[0], graph.input_nodes()[0]
    mesh = Mesh.parse("data=2,model=2")
    annotations.put(weight, Sharding(mesh, (("model",), ()), source="plan"))
    annotations.put(data, Note("an input"))
    graph.save(tmp_path / "g.pt2")
    loaded = {n.name: n for n in Graph.load(tmp_path / "g.pt2").fx.find_nodes(op="placeholder")}
    assert annotations.get(loaded[weight.name], Sharding) == Sharding(mesh, (("model",), ()), source="plan")
    assert annotations.get(loaded[data.name], Note) == Note("an input")
    assert sum(annotations.get(n, Note) is not None for n in loaded.values()) == 1


def test_hugging_face_graph_loads_in_a_fresh_process(tmp_path: Path) -> None:
    """Its output is a transformers ModelOutput: the loading process must import transformers before
    torch.export reads the file (the sharded DTensor ranks load graphs this way)."""
    torch.manual_seed(0)
    model, inputs = hf.gpt2_tiny()
    capture(model, inputs).save(tmp_path / "hf.pt2")
    script = ("import sys; from crossgraph.graphs import Graph; g = Graph.load(sys.argv[1]); "
              "print(g.output_names, 'transformers' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "hf.pt2")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "['logits'] True"


def test_load_rejects_missing_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no graph file"):
        Graph.load(tmp_path / "missing.pt2")
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a saved crossgraph graph"):
        Graph.load(junk)
    plain = tmp_path / "plain.pt2"
    torch.export.save(torch.export.export(torch.nn.ReLU(), (torch.ones(2),)), plain)
    with pytest.raises(InputError, match="not a crossgraph graph"):
        Graph.load(plain)


class _RunsCode:
    """Unpickling this runs code: it would create the file `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _rewrite(src: Path, dst: Path, change) -> None:
    """Copy a graph archive, each entry's bytes passed through change(name, data)."""
    with zipfile.ZipFile(src) as old, zipfile.ZipFile(dst, "w") as new:
        for item in old.infolist():
            new.writestr(item, change(item.filename, old.read(item.filename)))


def test_loading_a_crafted_pickle_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    """torch.export.load falls back to weights_only=False for sample inputs: Graph.load never does."""
    model, inputs = mlp.tiny()
    capture(model, inputs).save(tmp_path / "g.pt2")
    marker = tmp_path / "ran"
    evil = io.BytesIO()
    torch.save(_RunsCode(marker), evil)
    _rewrite(tmp_path / "g.pt2", tmp_path / "evil.pt2",
             lambda name, data: evil.getvalue() if "sample_inputs" in name else data)
    with pytest.raises(InputError, match="refusing to load it"):
        Graph.load(tmp_path / "evil.pt2")
    assert not marker.exists()
    assert Graph.load(tmp_path / "g.pt2").input_names == ["x"]  # the untouched file loads


def test_container_modules_are_imported_only_when_trusted(tmp_path: Path, monkeypatch) -> None:
    """A file names the modules of its container types; importing one runs its code."""
    marker = tmp_path / "imported"
    (tmp_path / "evil_types.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model, inputs = mlp.tiny()
    capture(model, inputs).save(tmp_path / "g.pt2")

    def name_module(name: str, data: bytes) -> bytes:
        if not name.endswith("extra/crossgraph.json"):
            return data
        meta = json.loads(data)
        meta["pytree_modules"] = ["evil_types"]
        return json.dumps(meta).encode()

    _rewrite(tmp_path / "g.pt2", tmp_path / "named.pt2", name_module)
    with pytest.raises(InputError, match="not a trusted module"):
        Graph.load(tmp_path / "named.pt2")
    assert not marker.exists()
    Graph.load(tmp_path / "named.pt2", trusted_modules=["evil_types"])
    assert marker.exists()


def test_summary_and_format() -> None:
    model, inputs = gpt2.tiny()
    graph = capture(model, inputs)
    summary = graph.summary()
    assert f"{graph.num_parameters():,} parameters" in summary
    assert graph.num_parameters() == sum(t.numel() for t in flatten_tree(model.params).values())
    assert "aten._softmax.default" in summary and "input  input_ids: int64[2, 8]" in summary
    text = graph.format()
    assert "aten._softmax.default(" in text and "gpt2.py:" in text and "in attention" in text


keys = st.text("abcxyz_0123456789", min_size=1, max_size=4)
trees = st.recursive(st.integers(0, 9).map(lambda v: torch.full((1,), float(v))),
                     lambda sub: st.dictionaries(keys, sub, min_size=1, max_size=3), max_leaves=10)


@given(st.dictionaries(keys, trees, min_size=1, max_size=3))
def test_flatten_unflatten_round_trip(tree: dict) -> None:
    flat = flatten_tree(tree)
    assert all("." not in part for path in flat for part in path.split("."))
    assert flatten_tree(unflatten_tree(flat)) == flat


def test_flatten_rejects_dotted_keys() -> None:
    with pytest.raises(ValueError, match="without '.'"):
        flatten_tree({"a.b": torch.ones(1)})

"""Files and faults (issue 19): dynamic dimensions bounded by what the model can take, and every artifact refusing
what it cannot take (a sequence past its position table, a token id past its vocabulary, int64 values outside
int32 on jax) with an InputError naming the input, the dimension and the bound; the sharded training step's loss
chosen from the outputs; progress bars only on a terminal."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from crossgraph.compiler.cli import main
from crossgraph.compiler.export import auto_dynamic_shapes, export
from crossgraph.compiler.lower import lower
from crossgraph.graphs import InputError, bounds, capture

REPO = Path(__file__).resolve().parents[2]
SPECS = REPO / "tests" / "fixtures" / "faults_specs.py"
sys.path.insert(0, str(SPECS.parent))

import faults_specs  # noqa: E402

LOADERS = {"onnx": ("crossgraph.compiler.onnx_rt", "model.onnx"),
           "jax": ("crossgraph.compiler.jaxlower.artifact", "model.jax.bin"),
           "inductor": ("crossgraph.compiler.inductor", "model.pt2")}


@pytest.fixture(scope="module")
def positions():
    """The 10-position model captured with --dynamic's shapes, and its example inputs."""
    model, inputs = faults_specs.positions()
    return model, inputs, capture(model, inputs, auto_dynamic_shapes(inputs))


def test_a_position_table_bounds_the_sequence(positions) -> None:
    _, _, graph = positions
    dims = graph.dynamic_dims()["ids"]
    assert dims[1].endswith("in [2, 10]") and dims[0].endswith("in [2, int_oo]"), dims
    assert bounds.input_index_bounds(graph)["ids"].rows == 50


def test_gpt2_tiny_sequence_goes_up_to_its_64_positions() -> None:
    from crossgraph.models import gpt2
    model, inputs = gpt2.tiny()
    graph = capture(model, inputs, auto_dynamic_shapes(inputs))
    dims = graph.dynamic_dims()["input_ids"]
    assert dims[1].endswith("in [2, 64]") and dims[0].endswith("int_oo]"), dims
    assert [2, 64] in bounds.signature_of(graph)["symbols"].values()  # what the ONNX and AOTI wrappers check


def test_max_caps_a_dimension_and_bad_caps_are_input_errors() -> None:
    model, inputs = faults_specs.positions()
    graph = capture(model, inputs, auto_dynamic_shapes(inputs, ["ids"], {"ids": {1: 8, 0: 4}}))
    dims = graph.dynamic_dims()["ids"]
    assert dims[1].endswith("in [2, 8]") and dims[0].endswith("in [2, 4]"), dims
    with pytest.raises(InputError, match="example input 'ids' has size 6"):
        auto_dynamic_shapes(inputs, ["ids"], {"ids": {1: 4}})
    with pytest.raises(InputError, match="names input 'x'; the inputs are ids"):
        auto_dynamic_shapes(inputs, ["ids"], {"x": {1: 4}})
    with pytest.raises(InputError, match="has 2 dimension"):
        auto_dynamic_shapes(inputs, ["ids"], {"ids": {2: 4}})
    for bad in ("ids=4", "ids.x=4", "ids.1=0", ".1=3"):
        with pytest.raises(InputError, match="NAME.DIM=N|at least 1"):
            bounds.parse_max(bad)
    assert bounds.max_sizes(["ids.1=64", "mask.0=2"]) == {"ids": {1: 64}, "mask": {0: 2}}
    long = (torch.randint(0, 50, (2, 12)),)  # past the 10 positions: the model itself cannot run it
    with pytest.raises(InputError, match=r"indexes the 10 rows of pos.weight .*example inputs have s\d+ = 12"):
        capture(model, long, auto_dynamic_shapes(long))


@pytest.mark.parametrize("target", ["onnx", "jax", "inductor"])
def test_a_sequence_past_the_table_is_refused_by_every_artifact(positions, target: str, tmp_path: Path) -> None:
    """Before: jax returned NaN rows, ONNX failed in a broadcast, AOTInductor asserted on an index. Now each, in
    process and loaded from its file, refuses with the input, the dim and the bound; in-range shapes still run."""
    import importlib
    model, _, graph = positions
    artifact = lower(graph, target)
    export(graph, [target], tmp_path / "out")
    module, filename = LOADERS[target]
    loaded = importlib.import_module(module).load(tmp_path / "out" / filename)
    inside = torch.randint(0, 50, (3, 10))
    with torch.no_grad():
        want = model(inside).numpy()
    for runner in (artifact, loaded):  # numpy arrays: what every loaded runtime takes
        np.testing.assert_allclose(runner(inside.numpy())[0], want, atol=1e-5, rtol=1e-4)
        with pytest.raises(InputError, match=r"input 'ids' dim 1 is 11, above its bound 10"):
            runner(torch.randint(0, 50, (3, 11)).numpy())
    if target == "jax":  # a module without its manifest: its own symbolic-shape constraints refuse
        bare = tmp_path / "bare" / filename
        bare.parent.mkdir()
        bare.write_bytes((tmp_path / "out" / filename).read_bytes())
        with pytest.raises(InputError, match=r"input 0 dim 1 is 11: the jax module takes only s\d+ <= 10"):
            importlib.import_module(module).load(bare)(torch.randint(0, 50, (3, 11)).numpy())


def test_jax_refuses_token_ids_outside_the_vocabulary(positions, tmp_path: Path) -> None:
    """An XLA gather clamps or fills an out-of-range index (NaN rows); the jax wrappers refuse it first."""
    from crossgraph.compiler.jaxlower.artifact import load
    _, inputs, graph = positions
    export(graph, ["jax"], tmp_path / "out")
    high, low = inputs[0].clone(), inputs[0].clone()
    high[1, 2], low[0, 1] = 50, -1
    for runner in (lower(graph, "jax"), load(tmp_path / "out" / "model.jax.bin")):
        with pytest.raises(InputError, match=r"input 'ids' holds the index 50, outside \[0, 50\)"):
            runner(high)
        with pytest.raises(InputError, match=r"holds the index -1"):
            runner(low)
        assert np.isfinite(runner(inputs[0])[0]).all()


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_with_max_runs_drawn_shapes_within_it_and_refuses_a_bad_cap(capsys) -> None:
    spec = f"{SPECS}:positions"
    code, out, err = _cli(capsys, "check", spec, "--targets", "eager,jax", "--dynamic", "--max", "ids.1=4")
    assert code == 2 and "--max ids.1=4: the example input 'ids' has size 6" in err, err
    code, _, err = _cli(capsys, "check", spec, "--targets", "eager", "--max", "ids.1=8")
    assert code == 2 and "add --dynamic" in err, err
    code, out, err = _cli(capsys, "check", spec, "--targets", "eager,jax,onnx", "--dynamic", "--max", "ids.1=8",
                          "--examples", "3")
    assert code == 0, out + err


@pytest.mark.parametrize("factory", ["wide_int64", "float64_input"])
def test_values_jax_cannot_hold_exit_2_on_check(capsys, factory: str) -> None:
    """An int64 input outside int32 exited 1 (an error while running) where a float64 input exited 2: both are
    bad input, found when the target is prepared, and the report says which input in one line."""
    code, out, _ = _cli(capsys, "check", f"{SPECS}:{factory}", "--targets", "eager,jax")
    assert code == 2, out
    line = next(line for line in out.splitlines() if line.strip().startswith("jax:"))
    assert ("input 'x'" in line and "outside int32" in line) if factory == "wide_int64" else "float64" in line


def test_calibration_draws_no_progress_bar_into_a_log(capsys) -> None:
    from crossgraph.models import mlp
    from crossgraph.passes.calibration import calibrate
    model, inputs = mlp.tiny()
    graph = capture(model, inputs)
    calibrate(graph, [inputs] * 3, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err and "calibrating" not in err, err


def test_sharded_training_loss_fits_the_outputs() -> None:
    """Next-token cross entropy only for logits over the token ids' vocabulary; a base model's hidden states
    (LlamaModel: [B, T, 32] over a vocabulary of 128) get the mean square, and say why."""
    from crossgraph.compiler import dtensor
    from crossgraph.models import gpt2
    model, inputs = faults_specs.llama_base()
    loss, reason = dtensor.choose_loss(capture(model, inputs))
    assert loss == "mean_square" and "32" in reason and "128" in reason, reason
    model, inputs = gpt2.tiny()
    loss, reason = dtensor.choose_loss(capture(model, inputs))
    assert loss == "next_token" and "128-token vocabulary" in reason, reason


def test_check_sharded_trains_a_hugging_face_base_model_with_mean_square() -> None:
    """`check --mesh data=2,model=2` on a LlamaModel ended in "IndexError: Target 94 is out of bounds": the
    training step took hidden states for logits. Now the reference, and the jax engine's sharded step (DTensor
    runs the same loss: compiler.dtensor.LOSSES), train with the mean square, and the report says so."""
    from crossgraph.compiler.sharded_check import check_sharded
    from crossgraph.graphs import Mesh
    torch.manual_seed(0)
    model, inputs = faults_specs.llama_base()
    report = check_sharded(model, inputs, Mesh.parse("data=2,model=2"), plans=["2d"], engines=["jax"])
    statuses = {name: result.status for name, result in report.parity.targets.items()}
    assert statuses == {"jax[2d]": "pass", "jax[2d] train": "pass"}, report.table()
    assert report.loss == "mean_square" and "training step loss: mean_square" in report.table()
    assert report.to_json()["train_loss"]["loss"] == "mean_square"


class _Pow(torch.nn.Module):
    def forward(self, base: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
        return base ** exponent


def test_jax_integer_powers_follow_torch_for_negative_exponents() -> None:
    """OpInfo's `__rpow__` int64 divergence: JAX gave 7 ** -5 = -1901072361 where torch gives 0 (1 for base 1,
    +-1 for base -1). Not an int32 overflow: JAX's integer power has no negative exponents."""
    base = torch.tensor([-2, 7, 6, -8, 2, 1, -1, 0, 3])
    exponent = torch.tensor([[0], [-5], [4], [-8], [-6], [-3], [-2], [-1], [5]])
    got = lower(capture(_Pow(), (base, exponent)), "jax")(base, exponent)[0]
    np.testing.assert_array_equal(got, (base ** exponent).numpy())

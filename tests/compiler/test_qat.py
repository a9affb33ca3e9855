"""Quantization-aware training: fake-quantized linears compute on exactly the deployed int8 / uint8 grids, their
gradients pass straight through, the compiled Inductor step holds the rounding and follows the eager step, QAT
lowers the loss, and exported weights quantize without loss.

Tolerances, measured on GPT-2 tiny (40 jittered seeds, one AdamW step, lr 1e-2, eps 1e-5, torch 2.13 CPU): compiled
vs eager QAT, worst |loss difference| 9.5e-7, worst gradient difference 1.6e-7, worst parameter difference 1.3e-5
(AdamW's g / (|g| + eps) amplifies gradient rounding by up to lr / eps where g ~ 0, see test_training.py). The fake
quantization itself moves the loss by 1.9e-4, 1.9e-3 and 3.5e-4 on seeds 0, 1, 2 (the seeds compared here), far
outside LOSS_TOL; on other seeds it can move it less (5e-7 at the least of 40: errors cancel in the mean), so the
compiled graph's rounding is checked by counting its ops, not by the loss alone.

Compile cost: one Inductor compile (the GPT-2 QAT AdamW step, ~20-30 s here), shared by the module's fixtures.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils import _pytree as pytree

from crossgraph.compiler import Tolerance, compare_array, qat, training
from crossgraph.graphs import FunctionalModel, InputError, flatten_tree
from crossgraph.graphs.quant import dequantize_weight, dynamic_quant_linear, quantize_weight, quantize_weight_int8
from crossgraph.models import gpt2, llama
from helpers import jitter

LOSS_TOL = Tolerance(atol=1e-5, rtol=1e-5)
GRAD_TOL = Tolerance(atol=1e-6, rtol=1e-4)
PARAM_TOL = Tolerance(atol=1e-4, rtol=0.0)
LR, EPS, STEPS = 1e-2, 1e-5, 5
GPT2 = gpt2.GPT2Config.tiny()
GPT2_LINEARS = tuple(f"h.{i}.{name}.weight" for i in range(GPT2.n_layer)
                     for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
MODELS: dict[str, Callable[[], tuple[FunctionalModel, tuple[torch.Tensor, ...]]]] = {
    "gpt2": gpt2.tiny, "llama": llama.tiny}


def _check(name: str, ref: Any, cand: Any, tol: Tolerance) -> None:
    verdict = compare_array(name, np.asarray(ref, dtype=np.float32), np.asarray(cand, dtype=np.float32), tol)
    assert verdict.ok, verdict.message


def _deployed(weight: torch.Tensor) -> torch.Tensor:
    """W [out, in] as the int8 kernels see it: quantize_weight_int8 on [K, N], dequantized, back to [out, in]."""
    q, scale = quantize_weight_int8(weight.T)
    return (q.float() * scale).T


def _on_grid(params: dict, paths: tuple[str, ...]) -> dict:
    """params with the leaves at `paths` replaced by their deployed values (written independently of qat)."""
    return pytree.tree_map_with_path(
        lambda key, t: _deployed(t) if ".".join(k.key for k in key) in paths else t, params)


def _single_linear(seed: int) -> tuple[FunctionalModel, torch.Tensor]:
    """A one-linear model and an input, for checks about one activation and one weight."""
    g = torch.Generator().manual_seed(seed)
    params = {"fc": {"weight": torch.randn(5, 7, generator=g), "bias": torch.randn(5, generator=g)}}
    model = FunctionalModel("linear", lambda p, x: F.linear(x, p["fc"]["weight"], p["fc"]["bias"]), params)
    return model, torch.randn(3, 4, 7, generator=g) * 2 + 0.5


# ---- (a) the forward: exactly the deployed grids --------------------------------------------------------------
@pytest.mark.parametrize("name", list(MODELS))
def test_weights_only_forward_is_the_model_on_deployed_weights_exactly(name: str) -> None:
    model, inputs = MODELS[name]()
    params = jitter(model.params, 0)
    fq = qat.fake_quant(dataclasses.replace(model, params=params), activations=False)
    paths = qat.quantized_paths(fq, *inputs)
    leaves = flatten_tree(params)
    assert all(leaves[p].ndim == 2 for p in paths)
    if name == "gpt2":
        assert paths == GPT2_LINEARS  # not wte (embedding and tied head `h @ wte.T`), wpe, or the norms
    else:
        assert "lm_head.weight" in paths and "embed_tokens.weight" not in paths
        assert len(paths) == 7 * len(model.params["layers"]) + 1
    with torch.no_grad():
        assert torch.equal(fq(*inputs), model.apply(_on_grid(params, paths), *inputs))


def test_weight_grid_is_also_the_int8_weight_only_grid() -> None:
    """MatMulNBits at 8 bits per channel dequantizes to the same weights, so weights-only QAT serves it too."""
    weight = _single_linear(3)[0].params["fc"]["weight"]
    qweight, scales, zero_points = quantize_weight(weight, 8)
    assert torch.equal(dequantize_weight(qweight, scales, zero_points, weight.shape[1], 8), qat.weight_grid(weight))


def test_activations_are_fake_quantized_as_dynamic_quant_linear_computes() -> None:
    """weights + activations: one linear equals crossgraph::dynamic_quant_linear up to float summation order."""
    model, x = _single_linear(0)
    w, b = model.params["fc"]["weight"], model.params["fc"]["bias"]
    out = qat.fake_quant(model)(x)
    _check("fake-quant linear vs dynamic_quant_linear", dynamic_quant_linear(x, *quantize_weight_int8(w.T), b), out,
           Tolerance(atol=1e-5, rtol=1e-5))
    assert not torch.allclose(out, qat.fake_quant(model, activations=False)(x), atol=1e-3)  # x was rounded


# ---- (b) straight-through gradients ---------------------------------------------------------------------------
def test_weight_gradients_pass_straight_through() -> None:
    """d(QAT loss)/d(params) = the float model's gradient at the deployed weights (torch.func.grad, eager)."""
    model, (ids,) = gpt2.tiny()
    params = jitter(model.params, 1)
    fq = qat.fake_quant(model, activations=False)
    grads = torch.func.grad(training.loss_fn(fq, "next_token"))(params, ids)
    ref = torch.func.grad(training.loss_fn(model, "next_token"))(_on_grid(params, GPT2_LINEARS), ids)
    for path, g in flatten_tree(ref).items():
        _check(f"d(loss)/d({path})", g, flatten_tree(grads)[path], GRAD_TOL)


def test_activation_gradients_pass_straight_through() -> None:
    """Through one fake-quantized linear, d/dx and d/dW are the plain linear's at the rounded x and W."""
    model, x = _single_linear(1)
    cotangent = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(2))
    fq = qat.fake_quant(model)

    def objective(apply: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        return lambda params, x: (apply(params, x) * cotangent).sum()

    grads = torch.func.grad(objective(fq.apply), argnums=(0, 1))(model.params, x)
    at = {"fc": {"weight": _deployed(model.params["fc"]["weight"]), "bias": model.params["fc"]["bias"]}}
    ref = torch.func.grad(objective(model.apply), argnums=(0, 1))(at, qat.activation_grid(x))
    for (key, r), g in zip(pytree.tree_flatten_with_path(ref)[0], pytree.tree_leaves(grads)):
        _check(f"d/d{pytree.keystr(key)}", r, g, GRAD_TOL)


# ---- (c, d, e) the compiled step -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compiled() -> tuple[training.TrainStep, collections.Counter]:
    """The GPT-2 QAT AdamW step, compiled on its first call while a post-grad pass counts the graph's ops.

    A custom post-grad pass also makes Inductor bypass its on-disk graph cache, so the pass sees the graph."""
    step = training.make_train_step(qat.fake_quant(gpt2.model(GPT2)), "next_token", lr=LR, eps=EPS)
    ops: collections.Counter = collections.Counter()

    def count(graph: torch.fx.Graph) -> None:
        ops.update(str(n.target) for n in graph.nodes if n.op == "call_function")

    params = jitter(gpt2.model(GPT2).params, 0)
    with torch._inductor.config.patch(post_grad_custom_post_pass=count):
        step(params, step.init(params), *gpt2.example_inputs(GPT2, 2, 8, 0))
    return step, ops


def test_compiled_graph_holds_the_fake_quant_rounding(compiled: tuple[training.TrainStep, Any]) -> None:
    """One round for each weight, two (zero point, values) for each activation, of every quantized linear."""
    _, ops = compiled
    assert ops["aten.round.default"] == 3 * len(GPT2_LINEARS)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compiled_qat_step_matches_the_eager_qat_step(compiled: tuple[training.TrainStep, Any], seed: int) -> None:
    step, _ = compiled
    model = qat.fake_quant(gpt2.model(GPT2))
    eager = training.make_train_step(model, "next_token", lr=LR, eps=EPS, compile=False)
    params, batch = jitter(model.params, seed), gpt2.example_inputs(GPT2, 2, 8, seed)
    new, _, value, grads = step(params, step.init(params), *batch)
    ref_new, _, ref_value, ref_grads = eager(params, eager.init(params), *batch)

    _check("loss", ref_value, value, LOSS_TOL)
    float_loss = training.loss_fn(gpt2.model(GPT2), "next_token")(params, *batch)
    assert not compare_array("float loss", np.float32(float_loss), np.float32(value), LOSS_TOL).ok
    for (path, r), g, p in zip(flatten_tree(ref_grads).items(), flatten_tree(grads).values(),
                               flatten_tree(new).values()):
        _check(f"d(loss)/d({path})", r, g, GRAD_TOL)
        _check(f"updated {path}", flatten_tree(ref_new)[path], p, PARAM_TOL)


@pytest.fixture(scope="module")
def trained(compiled: tuple[training.TrainStep, Any]) -> tuple[dict, list[float], tuple[torch.Tensor]]:
    """STEPS compiled QAT steps on one fixed batch: (final params, loss before each step, the batch)."""
    step, _ = compiled
    batch = gpt2.example_inputs(GPT2, 2, 8, 3)
    params, history = step.run(jitter(gpt2.model(GPT2).params, 3), [batch], STEPS)
    return params, history, batch


def test_qat_training_reduces_the_loss(trained: tuple[dict, list[float], Any]) -> None:
    _, history, _ = trained
    assert len(history) == STEPS and all(b < a for a, b in zip(history, history[1:]))


def test_exported_weights_quantize_without_loss(trained: tuple[dict, list[float], Any]) -> None:
    params, _, batch = trained
    model = dataclasses.replace(gpt2.model(GPT2), params=params)
    paths = qat.quantized_paths(qat.fake_quant(model), *batch)
    exported = qat.export_weights(params, paths)
    before, after = flatten_tree(params), flatten_tree(exported)
    assert any(not torch.equal(before[p], after[p]) for p in paths)  # trained weights are off the grid
    for path, leaf in after.items():
        assert torch.equal(leaf, _deployed(leaf) if path in paths else before[path]), path
    with torch.no_grad():  # the plain model on the export computes what weights-only QAT computed
        weights_only = qat.fake_quant(model, activations=False)(*batch)
        assert torch.equal(model.apply(exported, *batch), weights_only)


# ---- selection and errors --------------------------------------------------------------------------------------
def test_select_narrows_the_quantized_linears() -> None:
    model, inputs = gpt2.tiny()
    assert qat.quantized_paths(qat.fake_quant(model, select=["h.0.*"]), *inputs) == GPT2_LINEARS[:4]
    assert qat.quantized_paths(qat.fake_quant(model, select=lambda path, t: "mlp" in path), *inputs) == tuple(
        p for p in GPT2_LINEARS if "mlp" in p)
    with torch.no_grad():
        plain = qat.fake_quant(model, weights=None, activations=False)
        assert torch.equal(plain(*inputs), model(*inputs))


def test_bad_arguments_are_input_errors() -> None:
    model, inputs = gpt2.tiny()
    with pytest.raises(InputError, match="unknown weight scheme 'int4'"):
        qat.fake_quant(model, weights="int4")
    with pytest.raises(InputError, match="accepts no 2-D floating parameter"):
        qat.fake_quant(model, select="lm_head.*")
    with pytest.raises(InputError, match="is not fake-quantized"):
        qat.quantized_paths(model, *inputs)
    with pytest.raises(InputError, match="no parameter at nope.weight"):
        qat.export_weights(model.params, ["nope.weight"])

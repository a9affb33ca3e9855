"""The jax target on every tiny model: lowered graphs match the models run eagerly, saved artifacts keep their
dynamic shapes, unsupported ops are refused with their source line, and int64/float64 follow the width policy."""

from __future__ import annotations

import dataclasses
import functools
import inspect
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
import torch.utils._pytree as pytree
from hypothesis import given, settings
from hypothesis import strategies as st

from crossgraph.compiler import TolerancePolicy, compare_outputs
from crossgraph.compiler.jaxlower import NeedsX64Error, coverage, load, lower, to_jax_function, unavailable
from crossgraph.compiler.subject import to_numpy
from crossgraph.graphs import FunctionalModel, Graph, InputError, UnsupportedOpError, capture
from crossgraph.models import bert, gpt2, llama, mlp, resnet, vit


@dataclasses.dataclass(frozen=True)
class Case:
    """A tiny model, the inputs it is captured on, and how to make inputs at other sizes within its ranges."""

    make: Callable[[], tuple[FunctionalModel, tuple[torch.Tensor, ...], Any]]
    ranges: dict[str, tuple[int, int]]  # the sizes a property test draws (inside the dynamic ranges)
    inputs_at: Callable[..., tuple[torch.Tensor, ...]]


def _simple(module: Any, capture_kwargs: dict[str, int]) -> Callable[[], Any]:
    def make() -> Any:
        model, _ = module.tiny()
        return model, module.example_inputs(model.config, **capture_kwargs), module.dynamic_shapes(model.config)
    return make


def _with_cache() -> Any:
    config = llama.LlamaConfig.tiny()
    return (llama.model_with_cache(config), llama.example_inputs_with_cache(config, batch=2, seq=3, past=5),
            llama.dynamic_shapes_with_cache(config))


CASES: dict[str, Case] = {
    "mlp": Case(_simple(mlp, {}), {"batch": (1, 9)}, lambda c, batch, seed: mlp.example_inputs(c, batch, seed)),
    "gpt2": Case(_simple(gpt2, {}), {"batch": (1, 3), "seq": (1, 17)},
                 lambda c, batch, seq, seed: gpt2.example_inputs(c, batch, seq, seed)),
    "llama": Case(_simple(llama, {}), {"batch": (1, 3), "seq": (1, 17)},
                  lambda c, batch, seq, seed: llama.example_inputs(c, batch, seq, seed)),
    "bert": Case(_simple(bert, {}), {"batch": (1, 3), "seq": (1, 17)},
                 lambda c, batch, seq, seed: bert.example_inputs(c, batch, seq, seed)),
    "resnet": Case(_simple(resnet, {"batch": 2}), {"batch": (1, 2), "height": (2, 3), "width": (2, 3)},
                   lambda c, batch, height, width, seed: resnet.example_inputs(
                       c, batch, seed, height=height * c.stride, width=width * c.stride)),
    "vit": Case(_simple(vit, {"batch": 2}), {"batch": (1, 3)},
                lambda c, batch, seed: vit.example_inputs(c, batch, seed)),
    # jax.export takes every dimension variable to be >= 1, so the artifact is drawn with past >= 1.
    "llama_with_cache": Case(_with_cache, {"batch": (1, 3), "seq": (1, 5), "past": (1, 9)},
                             lambda c, batch, seq, past, seed: llama.example_inputs_with_cache(
                                 c, batch, seq, past, seed)),
}
POLICY = TolerancePolicy()


@functools.lru_cache(maxsize=None)
def captured(name: str) -> tuple[FunctionalModel, Graph, tuple[torch.Tensor, ...]]:
    """The model, its Graph captured with its dynamic shapes, and the capture inputs (once per process)."""
    model, inputs, dynamic = CASES[name].make()
    return model, capture(model, inputs, dynamic), inputs


def eager(model: FunctionalModel, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    """The model run as written: the reference every lowering is held to."""
    with torch.no_grad():
        return [to_numpy(t) for t in pytree.tree_leaves(model(*inputs))]


def assert_matches(refs: list[np.ndarray], outs: list[np.ndarray]) -> None:
    """Outputs agree under the jax target's tolerance for each output's dtype."""
    verdict = compare_outputs([str(i) for i in range(len(refs))], refs, outs,
                              [POLICY.for_output("jax", r.dtype) for r in refs])
    assert verdict.ok, verdict.message


def test_jax_is_available_and_lowers_most_of_core_aten() -> None:
    assert unavailable() is None
    lowered, core = coverage()
    assert len(core) > 150 and len(lowered) / len(core) > 0.85, coverage()


SAVED = ["gpt2", "bert", "resnet", "llama_with_cache"]
"""The models whose saved artifacts a property test runs across their dynamic ranges."""


@pytest.mark.parametrize("name", list(CASES))
def test_lowered_model_matches_eager(name: str) -> None:
    """At the captured shape, and (for the models no property test covers) at the largest drawn sizes."""
    model, graph, inputs = captured(name)
    artifact = lower(graph)
    assert_matches(eager(model, inputs), artifact(*inputs))
    if name not in SAVED:
        largest = {k: hi - 1 for k, (lo, hi) in CASES[name].ranges.items()}
        other = CASES[name].inputs_at(model.config, **largest, seed=1)
        assert_matches(eager(model, other), artifact(*other))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Any]:
    """Each model's artifact, saved once and loaded back."""
    @functools.lru_cache(maxsize=None)
    def load_saved(name: str) -> Any:
        artifact = lower(captured(name)[1])
        path = artifact.save(tmp_path_factory.mktemp(name))
        assert path.name == "model.jax.bin" and artifact.manifest()["platforms"]
        return load(path)
    return load_saved


@pytest.mark.parametrize("name", SAVED)
@settings(max_examples=max(2, settings().max_examples // 2))  # every new shape is an XLA compile
@given(data=st.data())
def test_saved_artifact_runs_across_dynamic_shapes(name: str, saved: Callable[[str], Any], data: Any) -> None:
    case = CASES[name]
    sizes = {k: data.draw(st.integers(lo, hi - 1), label=k) for k, (lo, hi) in case.ranges.items()}
    model = captured(name)[0]
    inputs = case.inputs_at(model.config, **sizes, seed=data.draw(st.integers(0, 100), label="seed"))
    assert_matches(eager(model, inputs), saved(name)(*inputs))


def test_manifest_names_version_platforms_and_symbolic_inputs() -> None:
    graph = captured("resnet")[1]
    manifest = lower(graph).manifest()
    assert manifest["platforms"] == ["cpu"] and manifest["calling_convention_version"] >= 9
    assert manifest["jax_version"] and "8*s" in manifest["input_shapes"][0]
    assert lower(graph, platforms=["cpu", "cuda"]).manifest()["platforms"] == ["cpu", "cuda"]
    with pytest.raises(InputError, match="unknown jax lowering option"):
        lower(graph, precision="high")


def test_load_refuses_missing_corrupt_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no jax artifact"):
        load(tmp_path / "absent.bin")
    (tmp_path / "garbage.bin").write_bytes(b"\x00\x01not a module")
    with pytest.raises(InputError, match="not a serialized jax.export module"):
        load(tmp_path / "garbage.bin")
    graph_file = tmp_path / "graph.pt2"
    captured("mlp")[1].save(graph_file)
    with pytest.raises(InputError, match="not a serialized jax.export module"):
        load(graph_file)


# ---- refusals ---------------------------------------------------------------------------------------------------
@torch.library.custom_op("crossgraph_test::mystery", mutates_args=())
def mystery(x: torch.Tensor) -> torch.Tensor:
    """An op no target knows."""
    return x.clone()


@mystery.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


def uses_mystery(params: dict, x: torch.Tensor) -> torch.Tensor:
    """A functional model whose graph holds an op the jax table lacks."""
    return mystery(x * params["w"])


def in_float64(params: dict, x: torch.Tensor) -> torch.Tensor:
    """A functional model that computes in float64."""
    return (x.double() * params["w"]).float()


def _line_of(fn: Callable[..., Any], text: str) -> int:
    lines, start = inspect.getsourcelines(fn)
    return start + next(i for i, line in enumerate(lines) if text in line)


def test_unsupported_op_names_op_target_and_source_line() -> None:
    model = FunctionalModel(name="mystery", apply=uses_mystery, params={"w": torch.ones(3)})
    graph = capture(model, (torch.ones(2, 3),))
    with pytest.raises(UnsupportedOpError) as raised:
        lower(graph)
    err = raised.value
    assert err.op == "crossgraph_test.mystery.default" and err.target == "jax"
    assert f"test_models.py:{_line_of(uses_mystery, 'mystery(x')}" in str(err)


def test_float64_is_refused_when_lowering_with_its_source_line() -> None:
    model = FunctionalModel(name="double", apply=in_float64, params={"w": torch.ones(3)})
    graph = capture(model, (torch.ones(2, 3),))
    with pytest.raises(NeedsX64Error, match=f"test_models.py:{_line_of(in_float64, 'double()')}.*float32"):
        lower(graph)


class TrainingBlock(torch.nn.Module):
    """Batch norm in training mode (batch statistics, running ones updated) and a bilinear upsample."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(self.norm(x), scale_factor=2, mode="bilinear")


class RandomDropout(torch.nn.Module):
    """Dropout in training mode: random, so no target can match torch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.dropout(x, 0.5, training=True)


def test_training_mode_graph_lowers_batch_statistics() -> None:
    x = torch.randn(2, 3, 5, 4)
    block = TrainingBlock().train()
    graph = capture(block, (x,))
    assert "aten._native_batch_norm_legit_functional.default" in graph.op_histogram()
    with torch.no_grad():
        expected = [to_numpy(block(x))]
    assert_matches(expected, lower(graph)(x))


def test_training_dropout_is_refused_with_its_source_line() -> None:
    graph = capture(RandomDropout(), (torch.ones(2, 3),))
    with pytest.raises(UnsupportedOpError, match="random.*eval mode") as raised:
        lower(graph)
    assert f"test_models.py:{_line_of(RandomDropout.forward, 'dropout(')}" in str(raised.value)


# ---- attention, which the Graph keeps whole (no OpInfo sample reaches it: make_fx decomposes it) --------------
def attend(params: dict, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, *,
           options: dict) -> torch.Tensor:
    """F.scaled_dot_product_attention as a functional model."""
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, **options)


def _qkv(q_heads: int, kv_heads: int, length: int, keys: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(q_heads + keys)
    sizes = ((q_heads, length), (kv_heads, keys), (kv_heads, keys))
    return tuple(torch.randn(2, h, n, 8, generator=g) for h, n in sizes)


@pytest.mark.parametrize("variant", ["causal", "bool_mask_with_a_fully_masked_row", "float_mask", "grouped_query"])
def test_scaled_dot_product_attention_kept_whole_matches_torch(variant: str) -> None:
    q, k, v = _qkv(4, 2 if variant == "grouped_query" else 4, 5, 7)
    mask = torch.rand(5, 7, generator=torch.Generator().manual_seed(3)) > 0.3
    mask[1] = False
    options: dict[str, Any] = {}
    if variant == "causal":
        mask, options = None, {"is_causal": True}
    elif variant == "float_mask":
        mask = torch.randn(2, 1, 5, 7)
    elif variant == "grouped_query":
        options = {"enable_gqa": True, "scale": 0.3}
    inputs = (q, k, v) if mask is None else (q, k, v, mask)
    apply = functools.partial(attend, mask=None, options=options) if mask is None else \
        functools.partial(attend, options=options)
    model = FunctionalModel(name="attention", apply=apply, params={})
    graph = capture(model, inputs)
    assert "aten.scaled_dot_product_attention.default" in graph.op_histogram()
    assert_matches(eager(model, inputs), lower(graph)(*inputs))


# ---- int64 ------------------------------------------------------------------------------------------------------
def token_arithmetic(params: dict, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Integer work on int64 ids: floor division, remainder, a cumulative sum and an argmax of embeddings."""
    scores = torch.nn.functional.embedding(ids, params["table"]).sum(-1)
    return ids * 3 // 2 - ids % 5, torch.cumsum(ids, dim=1), scores.argmax(dim=-1)


def test_int64_is_computed_in_int32_and_returned_as_int64() -> None:
    model = FunctionalModel(name="tokens", apply=token_arithmetic, params={"table": torch.randn(50, 4)})
    ids = torch.randint(-40, 50, (3, 7)).clamp(min=0)
    graph = capture(model, (ids,), [{0: torch.export.Dim("batch", max=64)}])
    artifact = lower(graph)
    assert artifact.exported().in_avals[0].dtype == np.int32
    outs = artifact(ids)
    refs = eager(model, (ids,))
    assert [o.dtype for o in outs] == [np.int64] * 3
    for out, ref in zip(outs, refs):
        np.testing.assert_array_equal(out, ref)


def test_int64_values_outside_int32_are_an_error_not_a_wrap() -> None:
    model, graph, inputs = captured("gpt2")
    with pytest.raises(InputError, match="outside int32"):
        lower(graph)(inputs[0] + (1 << 40))


def test_interpreter_function_is_pure_and_jittable() -> None:
    """to_jax_function gives fn(params, *inputs) whose params are named like the model's parameter tree."""
    import jax

    model, graph, inputs = captured("gpt2")
    function = to_jax_function(graph)
    assert set(function.params) == set(graph.parameters()) and "h.0.attn.c_attn.weight" in function.params
    out = jax.jit(function.fn)(function.params, np.asarray(inputs[0], np.int32))
    assert_matches(eager(model, inputs), [np.asarray(o) for o in out])

"""The crossgraph dialect on every target: each op passes torch.library's opcheck; graphs calling it lower to
onnx (ONNX Runtime's com.microsoft fused ops where they are the fast choice), jax and inductor and match the eager
graph in float32; the inductor/tensorrt decomposition leaves no dialect op and keeps the graph's meaning; saved
onnx and jax artifacts still run.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np
import onnx
import onnx.inliner
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from crossgraph.compiler.dialect_decompositions import DECOMPOSITIONS, decompose, dialect_nodes
from crossgraph.compiler.lower import lower
from crossgraph.graphs import Graph, UnsupportedOpError, capture
from crossgraph.graphs.dialect import OPS

pytest.importorskip("onnxruntime")
pytest.importorskip("jax")

ATOL, RTOL = 1e-5, 1e-4
ops = torch.ops.crossgraph


class Attention(nn.Module):
    """crossgraph.attention with its non-tensor arguments fixed; the mask, when given, is an input. With `split`,
    q, k and v come in as [B, S, H, D] and are transposed to heads first, as a model's head split does."""

    def __init__(self, causal: bool, scale: float, split: bool) -> None:
        super().__init__()
        self.causal, self.scale, self.split = causal, scale, split

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.split:
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        return ops.attention(q, k, v, mask, self.causal, self.scale)


class Block(nn.Module):
    """One of each dialect op; attention twice: causal after a head split (MultiHeadAttention on onnx), and GQA on
    sliced heads and queries (Sq < Sk, not a head split: standard ONNX) with an additive mask that leaves one
    query no key; the queries rotated by their positions' angles."""

    def __init__(self, hidden: int = 32, head_dim: int = 16) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(1 + 0.1 * torch.randn(hidden, generator=g))
        self.bias = nn.Parameter(0.1 * torch.randn(hidden, generator=g))
        self.register_buffer("inv_freq", 10000.0 ** -(torch.arange(0, head_dim, 2) / head_dim))

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, x: torch.Tensor, residual: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        causal = ops.attention(q, k, v, None, True, 0.25)
        tail = ops.attention(q[:, :, -3:], k[:, :2], v[:, :2], mask, True, 0.25)
        normed, total = ops.add_layer_norm(x, residual, self.weight, self.bias, 1e-5)
        hidden = ops.bias_gelu(normed, self.bias, "tanh") + ops.bias_gelu(total, self.bias, "none")
        angles = torch.arange(q.shape[2], dtype=q.dtype)[:, None] * self.inv_freq
        rotated = ops.rotary_embedding(q, angles.cos(), angles.sin())
        return causal, tail, total, ops.rms_norm(hidden, self.weight, 1e-6), rotated


class Rotary(nn.Module):
    """crossgraph.rotary_embedding of its inputs."""

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return ops.rotary_embedding(x, cos, sin)


class RmsNorm(nn.Module):
    """crossgraph.rms_norm with its weight (float32) as a parameter."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, hidden))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, self.weight, 1e-6)


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _qkv(sq: int = 8, sk: int = 8, heads: int = 4, kv_heads: int = 4, d: int = 16) -> list[torch.Tensor]:
    """q, k, v as [B, S, H, D] (before a head split)."""
    return [_randn(2, sq, heads, d, seed=1), _randn(2, sk, kv_heads, d, seed=2), _randn(2, sk, kv_heads, d, seed=3)]


def _bool_mask(*shape: int) -> torch.Tensor:
    """A random bool mask with every query row keeping its last key (no row fully masked)."""
    mask = _randn(*shape, seed=4) > 0
    mask[..., -1] = True
    return mask


def _hiding_bool_mask(*shape: int) -> torch.Tensor:
    """`_bool_mask` with query row 2 of the first batch hiding every key."""
    mask = _bool_mask(*shape)
    mask[0, ..., 2, :] = False
    return mask


def _left_padding(length: int) -> torch.Tensor:
    """[2, 1, 1, length] keys to keep: the first batch's first 3 are padding (causal, its first 3 queries see none)."""
    keep = torch.ones(2, 1, 1, length, dtype=torch.bool)
    keep[0, ..., :3] = False
    return keep


def _row_filled(mask: torch.Tensor, value: float) -> torch.Tensor:
    """`mask` with query row 3 of [0, 1] (or of [0, 0] when it has one head) all `value` and half of row 5 -inf."""
    mask = mask.clone()
    head = min(1, mask.shape[1] - 1)
    mask[0, head, 3] = value
    mask[0, head, 5, : mask.shape[-1] // 2] = float("-inf")
    return mask


LOWEST = torch.finfo(torch.float32).min
ATTENTION_CASES: dict[str, tuple[bool, bool, list[torch.Tensor]]] = {
    "causal": (True, True, _qkv()),
    "bool_mask": (False, True, [*_qkv(), _bool_mask(2, 1, 8, 8)]),
    "additive_mask": (False, True, [*_qkv(), _randn(1, 4, 8, 8, seed=5)]),
    "gqa": (False, True, _qkv(kv_heads=2)),
    "causal_sq_lt_sk": (True, True, _qkv(sq=4, sk=8)),
    "causal_gqa_sq_lt_sk_key_padding": (True, True, [*_qkv(sq=4, sk=8, kv_heads=2), _bool_mask(2, 1, 1, 8)]),
    "no_head_split_causal_gqa_sq_lt_sk": (True, False, [t.transpose(1, 2) for t in _qkv(sq=4, sk=8, kv_heads=2)]),
    # rows no key is left to: zeros (as sdpa); a finite lowest hides nothing (the mean of v, as sdpa)
    "bool_mask_hiding_a_row": (False, True, [*_qkv(), _hiding_bool_mask(2, 1, 8, 8)]),
    "additive_mask_hiding_a_row": (False, True, [*_qkv(), _row_filled(_randn(1, 4, 8, 8, seed=5), -math.inf)]),
    "additive_mask_with_a_lowest_row": (False, True, [*_qkv(), _row_filled(_randn(1, 4, 8, 8, seed=5), LOWEST)]),
    "gqa_bool_mask_hiding_a_row": (False, True, [*_qkv(kv_heads=2), _hiding_bool_mask(2, 1, 8, 8)]),
    "gqa_additive_mask_hiding_a_row": (False, True, [*_qkv(kv_heads=2),
                                                     _row_filled(_randn(1, 4, 8, 8, seed=5), -math.inf)]),
    "gqa_additive_mask_with_a_lowest_row": (False, True, [*_qkv(kv_heads=2),
                                                          _row_filled(_randn(1, 4, 8, 8, seed=5), LOWEST)]),
    "causal_sq_gt_sk": (True, True, _qkv(sq=8, sk=4)),
    "causal_left_padding": (True, True, [*_qkv(), _left_padding(8)]),
    "causal_additive_mask_with_a_lowest_row": (True, True, [*_qkv(), _row_filled(torch.zeros(1, 1, 8, 8), LOWEST)]),
    "no_head_split_causal_sq_gt_sk_additive_mask": (True, False, [*(t.transpose(1, 2) for t in _qkv(sq=8, sk=4)),
                                                                  _row_filled(torch.zeros(1, 1, 8, 4), -math.inf)]),
}
"""name: (causal, split, inputs)."""


def _angles(*shape: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of random angles."""
    angles = 3 * _randn(*shape, seed=seed)
    return angles.cos(), angles.sin()


ROTARY_CASES: dict[str, tuple[bool, list[torch.Tensor]]] = {
    "per_position": (True, [_randn(2, 4, 8, 16, seed=1), *_angles(8, 8, seed=2)]),
    "per_token": (True, [_randn(2, 4, 8, 16, seed=1), *_angles(2, 1, 8, 8, seed=3)]),
    "one_position_for_all": (True, [_randn(2, 4, 8, 16, seed=1), *_angles(1, 1, 1, 8, seed=4)]),
    "per_head": (False, [_randn(2, 4, 8, 16, seed=1), *_angles(4, 8, 8, seed=5)]),
    "float64": (False, [t.double() for t in (_randn(2, 4, 8, 16, seed=1), *_angles(8, 8, seed=2))]),
    "rank3": (False, [_randn(2, 8, 16, seed=1), *_angles(8, 8, seed=2)]),
}
"""name: (RotaryEmbedding on onnx, [x, cos, sin]). The contrib op reads one row of angles per position (x
[B, H, S, D]) and float32; angles that differ per head, other dtypes and ranks get the standard ops."""


def _onnx_contrib_ops(name: str) -> set[str]:
    """The com.microsoft ops the onnx lowering of a case uses: MultiHeadAttention for head splits without GQA."""
    if name == "block":
        return {"MultiHeadAttention", "FastGelu", "BiasGelu", "RotaryEmbedding"}
    _, split, (q, k, _, *_) = ATTENTION_CASES[name]
    return {"MultiHeadAttention"} if split and q.shape[2] == k.shape[2] else set()


@dataclasses.dataclass(frozen=True)
class Captured:
    graph: Graph
    inputs: list[torch.Tensor]

    def expected(self) -> list[np.ndarray]:
        return [t.numpy() for t in self.graph(*self.inputs)]


def _block_inputs() -> list[torch.Tensor]:
    mask = _randn(2, 1, 3, 8, seed=8)
    mask[1, 0, 1] = -math.inf  # a query row no key is left to: zeros
    return [*_qkv(), _randn(2, 5, 32, seed=6), _randn(2, 5, 32, seed=7), mask]


@pytest.fixture(scope="module")
def captured() -> Callable[[str], Captured]:
    """Each case captured once: the attention cases by name, "block" for one graph holding every op."""
    cache: dict[str, Captured] = {}

    def get(name: str) -> Captured:
        if name not in cache:
            if name == "block":
                inputs = _block_inputs()
                cache[name] = Captured(capture(Block(), tuple(inputs)), inputs)
            else:
                causal, split, inputs = ATTENTION_CASES[name]
                cache[name] = Captured(capture(Attention(causal, 0.3, split), tuple(inputs), name=name), inputs)
        return cache[name]
    return get


def _assert_close(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, atol=ATOL, rtol=RTOL)


def _onnx_ops(model: onnx.ModelProto) -> set[tuple[str, str]]:
    """(domain, op_type) of every node, local functions inlined."""
    inlined = onnx.inliner.inline_local_functions(model)
    return {(n.domain, n.op_type) for n in inlined.graph.node}


# ---- the ops themselves ---------------------------------------------------------------------------------------
def _heads(inputs: list[torch.Tensor], split: bool) -> list[torch.Tensor]:
    """q, k, v as the op takes them, [B, H, S, D]."""
    return [t.transpose(1, 2) if split else t for t in inputs[:3]]


OPCHECK_SAMPLES: list[tuple[Any, tuple[Any, ...]]] = [
    *[(ops.attention.default, (*_heads(inputs, split), inputs[3] if len(inputs) > 3 else None, causal, 0.3))
      for causal, split, inputs in ATTENTION_CASES.values()],
    (ops.add_layer_norm.default, (_randn(2, 5, 8, seed=1), _randn(2, 5, 8, seed=2), torch.ones(8), None, 1e-5)),
    (ops.add_layer_norm.default, (_randn(2, 5, 8, seed=1), _randn(5, 8, seed=2), torch.ones(8), torch.zeros(8),
                                  1e-5)),
    # a transposed x (Whisper's conv output): the norm's output is contiguous, the sum keeps the add's layout
    (ops.add_layer_norm.default, (_randn(2, 8, 5, seed=1).transpose(1, 2), _randn(2, 5, 8, seed=2), torch.ones(8),
                                  None, 1e-5)),
    (ops.bias_gelu.default, (_randn(3, 8, seed=1), _randn(8, seed=2), "none")),
    (ops.bias_gelu.default, (_randn(3, 8, seed=1), _randn(8, seed=2), "tanh")),
    (ops.rms_norm.default, (_randn(3, 8, seed=1), torch.ones(8), 1e-6)),
    (ops.rms_norm.default, (_randn(3, 8, seed=1).bfloat16(), torch.ones(8), 1e-6)),
    *[(ops.rotary_embedding.default, tuple(inputs)) for _, inputs in ROTARY_CASES.values()],
    (ops.rotary_embedding.default, (_randn(2, 4, 8, 16, seed=1).bfloat16(), *_angles(8, 8, seed=2))),
]


@pytest.mark.parametrize("op, args", OPCHECK_SAMPLES, ids=lambda v: str(v) if isinstance(v, torch._ops.OpOverload)
                         else "")
def test_opcheck(op: torch._ops.OpOverload, args: tuple[Any, ...]) -> None:
    torch.library.opcheck(op, args)


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool,
          scale: float) -> torch.Tensor:
    """torch's own attention with the dialect's arguments: the end-aligned causal mask folded into the mask."""
    if causal:
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool).tril(k.shape[-2] - q.shape[-2])
        mask = keep if mask is None else mask & keep if mask.dtype == torch.bool else mask.where(keep, -math.inf)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])


@pytest.mark.parametrize("name", ATTENTION_CASES)
def test_attention_reference_is_sdpa(name: str) -> None:
    causal, split, inputs = ATTENTION_CASES[name]
    args = (*_heads(inputs, split), inputs[3] if len(inputs) > 3 else None, causal, 0.3)
    torch.testing.assert_close(ops.attention(*args), _sdpa(*args), atol=ATOL, rtol=RTOL)


def test_attention_rows_left_no_key_are_zeros_and_a_finite_mask_hides_nothing() -> None:
    """sdpa's safe softmax, not the mean of v a finite fill gives; a NaN input still gives NaN."""
    q, k, v = _heads(_qkv(), True)
    hidden = ops.attention(q, k, v, _hiding_bool_mask(2, 1, 8, 8), False, 0.3)
    assert hidden[0, :, 2].eq(0).all() and hidden[0, :, 3].ne(0).all()
    lowest = ops.attention(q, k, v, _row_filled(torch.zeros(1, 4, 8, 8), LOWEST), False, 0.3)
    torch.testing.assert_close(lowest[0, 1, 3], v[0, 1].mean(0))
    assert ops.attention(q, k, v, _left_padding(8), True, 0.3)[0, :, :3].eq(0).all()
    assert ops.attention(q, k[:, :, :4], v[:, :, :4], None, True, 0.3)[:, :, :4].eq(0).all()  # Sq > Sk
    nan_key = (q, k.index_fill(2, torch.tensor([0]), math.nan), v, _hiding_bool_mask(2, 1, 8, 8), False, 0.3)
    assert ops.attention(*nan_key).isnan().all()  # every score row has a NaN, the hidden one too: not -inf only
    torch.testing.assert_close(ops.attention(*nan_key), _sdpa(*nan_key), equal_nan=True)


def test_every_dialect_op_has_an_entry_in_every_table() -> None:
    from crossgraph.compiler.jaxlower import registry
    from crossgraph.compiler.onnx_dialect import TRANSLATIONS

    for op in OPS.values():
        assert op in DECOMPOSITIONS
        assert op in TRANSLATIONS
        assert registry.lookup(op) is not None


# ---- decomposition (inductor, tensorrt) ----------------------------------------------------------------------
@pytest.mark.parametrize("name", [*ATTENTION_CASES, "block"])
def test_decomposition_keeps_meaning_and_leaves_no_dialect_op(captured: Callable[[str], Captured],
                                                            name: str) -> None:
    case = captured(name)
    decomposed = decompose(case.graph, "tensorrt")
    assert not dialect_nodes(decomposed)
    assert torch.ops.aten.scaled_dot_product_attention.default in {n.target for n in decomposed.fx.nodes}
    assert (decomposed.name, decomposed.input_names, decomposed.output_names) == \
        (case.graph.name, case.graph.input_names, case.graph.output_names)
    _assert_close([t.numpy() for t in decomposed(*case.inputs)], case.expected())


def test_decomposition_refuses_a_dialect_op_it_has_no_entry_for(captured: Callable[[str], Captured],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from crossgraph.compiler import dialect_decompositions

    monkeypatch.delitem(dialect_decompositions.DECOMPOSITIONS, OPS["rms_norm"])
    with pytest.raises(UnsupportedOpError, match="rms_norm.*inductor|inductor.*rms_norm"):
        decompose(captured("block").graph, "inductor")


@pytest.mark.parametrize("name", ["block", "causal_left_padding"])
def test_inductor(captured: Callable[[str], Captured], name: str) -> None:
    """Inductor's sdpa kernel gives the dialect's zeros too (block: a float mask row of -inf; causal_left_padding:
    a bool key padding mask that leaves the first queries no key)."""
    case = captured(name)
    _assert_close(lower(case.graph, "inductor")(*case.inputs), case.expected())


# ---- onnx -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [*ATTENTION_CASES, "block"])
def test_onnx(captured: Callable[[str], Captured], name: str, tmp_path: Any) -> None:
    from crossgraph.compiler import onnx_rt

    case = captured(name)
    artifact = lower(case.graph, "onnx")
    expected = case.expected()
    _assert_close(artifact(*case.inputs), expected)
    assert {op for domain, op in _onnx_ops(artifact.model) if domain == "com.microsoft"} == _onnx_contrib_ops(name)
    loaded = onnx_rt.load(artifact.save(tmp_path))
    _assert_close(loaded(*(t.numpy() for t in case.inputs)), expected)


def test_onnx_falls_back_to_standard_ops_beyond_float32() -> None:
    """ONNX Runtime's contrib kernels are float32-only on the CPU: a float64 head split gets standard ONNX."""
    inputs = [t.double() for t in _qkv(sq=4, sk=8)]
    graph = capture(Attention(True, 0.3, True), tuple(inputs))
    artifact = lower(graph, "onnx")
    assert not {d for d, _ in _onnx_ops(artifact.model)} - {"", "ai.onnx"}
    np.testing.assert_allclose(artifact(*inputs)[0], graph(*inputs)[0].numpy(), atol=1e-12)


def test_onnx_runtime_fuses_the_norms_into_its_own_kernels(captured: Callable[[str], Captured],
                                                         tmp_path: Any) -> None:
    """add_layer_norm and rms_norm are exported as standard ONNX that ONNX Runtime's optimizer turns into its
    vectorized LayerNormalization and SimplifiedLayerNormalization kernels (faster on the CPU than the contrib
    Skip*LayerNormalization kernels)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(lower(captured("block").graph, "onnx").model.SerializeToString(), options,
                         providers=["CPUExecutionProvider"])
    optimized = {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node}
    assert {"LayerNormalization", "SimplifiedLayerNormalization"} <= optimized


@pytest.mark.parametrize("target", ["onnx", "jax"])
@pytest.mark.parametrize("same_length", [True, False], ids=["sq_is_sk", "sq_and_sk_apart"])
def test_causal_attention_with_dynamic_lengths(target: str, same_length: bool) -> None:
    """One symbolic length for queries and keys keeps the runtime's own causal mode (MultiHeadAttention's
    `unidirectional`, dot_product_attention's `is_causal`); two build the end-aligned mask at run time."""
    sq = torch.export.Dim("sq", min=2, max=32)
    sk = sq if same_length else torch.export.Dim("sk", min=2, max=32)
    inputs = _qkv(sq=8, sk=8)
    graph = capture(Attention(True, 0.3, True), tuple(inputs), ({1: sq}, {1: sk}, {1: sk}))
    artifact = lower(graph, target)
    for q_len, k_len in ((5, 5), (11, 11)) if same_length else ((3, 7), (6, 6)):
        other = _qkv(sq=q_len, sk=k_len)
        _assert_close(artifact(*other), [t.numpy() for t in graph(*other)])


@pytest.mark.parametrize("target", ["onnx", "jax"])
def test_rms_norm_of_float16_with_a_float32_weight(target: str) -> None:
    """Normalized in float32, rounded to float16, then promoted to float32 by the weight, as the reference; the
    float16 rounding of x / rms may land one float16 step apart (rsqrt vs 1 / sqrt), hence float16's tolerance."""
    x = _randn(2, 5, 32, seed=9).half()
    graph = capture(RmsNorm(32), (x,))
    (out,) = lower(graph, target)(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, graph(x)[0].numpy(), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_jax_attention_in_half_precision(dtype: torch.dtype) -> None:
    """Computed in float32 and rounded once, as torch's CPU kernel does. float16 failed before: XLA's CPU dot
    has no f16 x f16 -> f32 form ('F16_F16_F32' is not supported by dot_general on CPU)."""
    inputs = [t.to(dtype) for t in _qkv()]
    graph = capture(Attention(True, 0.25, True), tuple(inputs))
    (out,) = lower(graph, "jax")(*inputs)
    expected = graph(*inputs)[0].float().numpy()
    np.testing.assert_allclose(np.asarray(out, dtype=np.float32), expected, atol=1e-2, rtol=1e-2)
    assert str(out.dtype) == str(dtype).removeprefix("torch.")


# ---- jax ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [*ATTENTION_CASES, "block"])
def test_jax(captured: Callable[[str], Captured], name: str, tmp_path: Any) -> None:
    from crossgraph.compiler import jaxlower

    case = captured(name)
    artifact = lower(case.graph, "jax")
    expected = case.expected()
    _assert_close(artifact(*case.inputs), expected)
    _assert_close(jaxlower.load(artifact.save(tmp_path))(*case.inputs), expected)


# ---- rotary embedding on every target --------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["decomposition", "onnx", "jax"])
@pytest.mark.parametrize("name", ROTARY_CASES)
def test_rotary_embedding_layouts(name: str, target: str) -> None:
    """The reference against each target's translation, for the angle layouts Llama (per position) and Hugging
    Face (per token) give and for those ONNX Runtime's RotaryEmbedding cannot take."""
    contrib, inputs = ROTARY_CASES[name]
    if target == "jax" and inputs[0].dtype == torch.float64:
        pytest.skip("the jax target refuses float64 (jax_enable_x64 stays off)")
    graph = capture(Rotary(), tuple(inputs))
    expected = [t.numpy() for t in graph(*inputs)]
    if target == "decomposition":
        decomposed = decompose(graph, "inductor")
        assert not dialect_nodes(decomposed)
        _assert_close([t.numpy() for t in decomposed(*inputs)], expected)
        return
    artifact = lower(graph, target)
    _assert_close(artifact(*inputs), expected)
    if target == "onnx":
        assert ("com.microsoft", "RotaryEmbedding") in _onnx_ops(artifact.model) if contrib else \
            not {d for d, _ in _onnx_ops(artifact.model)} - {"", "ai.onnx"}

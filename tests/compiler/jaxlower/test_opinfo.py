"""OpInfo parity: the jax table against torch on torch's own OpInfo samples (traced with make_fx and crossgraph's
core-ATen decompositions, or with none), in float32, float16/bfloat16 and int64 where an op supports them; and the
ops no sample reaches (backward ops, ops capture keeps whole), on hand-made calls.

Which OpInfo cases run is chosen by opinfo_select.py (few cases that reach every (table op, dtype) pair OpInfo can
reach); the table ops no sample reaches are called directly (OUTSIDE_OPINFO) or listed in UNREACHABLE with where
they are tested instead.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import pytest
import torch

import opinfo_harness as harness
from crossgraph.compiler.jaxlower import registry
from opinfo_cases import CASES, DIVERGENCES, EXPECTED

_SIZES = "sizes and assertions of graphs captured with dynamic shapes: test_models.py"
UNREACHABLE: dict[str, str] = {
    **dict.fromkeys(["aten.sym_size.int", "aten.sym_numel.default", "aten.sym_stride.int",
                     "aten.sym_storage_offset.default", "aten._assert_tensor_metadata.default",
                     "aten._assert_scalar.default", "aten.sym_constrain_range.default",
                     "aten.sym_constrain_range_for_size.default", "aten._assert_async.msg",
                     "aten._assert_async.default"], _SIZES),
    "aten.scaled_dot_product_attention.default":
        "make_fx decomposes it; capture keeps it whole: test_models.py::test_scaled_dot_product_attention_*",
    **dict.fromkeys(["crossgraph.attention.default", "crossgraph.add_layer_norm.default",
                     "crossgraph.bias_gelu.default", "crossgraph.rms_norm.default",
                     "crossgraph.rotary_embedding.default"],
                    "the crossgraph dialect, not in OpInfo: tests/compiler/test_dialect.py"),
    **dict.fromkeys(["crossgraph.weight_only_linear.default", "crossgraph.weight_only_embedding.default",
                     "crossgraph.dynamic_quant_linear.default",
                     "crossgraph.static_quant_linear.default"],
                    "the crossgraph dialect, not in OpInfo: tests/compiler/jaxlower/test_quant.py"),
    "aten.histc.default": "added after opinfo_cases.py was generated: tests/compiler/test_moe.py",
    **dict.fromkeys(["aten.nonzero.default", "aten.bincount.default", "aten.masked_select.default"],
                    "refused by name (data-dependent output shapes): tests/compiler/test_moe.py"),
}
"""Table ops that no OpInfo case and no OUTSIDE_OPINFO call exercises, and where each is tested instead."""


@functools.lru_cache(maxsize=1)
def database() -> dict[str, Any]:
    """torch's OpInfo database, loaded once per process."""
    return harness.op_db()


@pytest.mark.parametrize(("name", "dtype", "mode", "count"), CASES, ids=["-".join(c[:3]) for c in CASES])
def test_opinfo_samples_match_torch(name: str, dtype: str, mode: str, count: int) -> None:
    info = database()[name]
    rule = harness.RULES.get(name, harness.Rule())
    outcomes = [harness.check_sample(info, s, rule, mode)
                for s in harness.samples(info, harness.DTYPES[dtype], count)]
    failures = [o.detail for o in outcomes if o.status == "fail"]
    assert not failures, f"{name} in {dtype} ({mode}): " + "; ".join(failures)
    exercised = set().union(*(o.ops for o in outcomes if o.status == "pass"))
    missing = sorted(set(EXPECTED[name, dtype, mode]) - exercised)
    assert not missing, f"{name} in {dtype} ({mode}) no longer exercises {missing}: rerun opinfo_select.py"


@pytest.mark.parametrize(("name", "dtype", "mode"), [
    pytest.param(*key, marks=pytest.mark.xfail(strict=True, reason=f"known divergence: {detail}"), id="-".join(key))
    for key, detail in DIVERGENCES.items()])
def test_known_divergences_still_diverge(name: str, dtype: str, mode: str) -> None:
    """Every case opinfo_select.py found diverging, run on the samples it scanned: a strict xfail, so a fix
    (XPASS) fails here too (move the case to opinfo_select.REGRESSIONS and regenerate), and so does a new one in
    the CASES above."""
    info = database()[name]
    rule = harness.RULES.get(name, harness.Rule())
    outcomes = [harness.check_sample(info, s, rule, mode) for s in harness.samples(info, harness.DTYPES[dtype])]
    failures = [o.detail for o in outcomes if o.status == "fail"]
    assert not failures, f"{name} in {dtype} ({mode}): " + "; ".join(failures)


def test_every_table_op_is_exercised_or_explained() -> None:
    table = {str(t) for t in registry.targets() if isinstance(t, torch._ops.OpOverload)}
    exercised = set().union(*map(set, EXPECTED.values())) | {str(make()[0]) for make in OUTSIDE_OPINFO.values()}
    assert not exercised & set(UNREACHABLE), "UNREACHABLE lists ops a case exercises"
    assert table == exercised | set(UNREACHABLE), (
        f"not exercised: {sorted(table - exercised - set(UNREACHABLE))}; "
        f"not in the table: {sorted((exercised | set(UNREACHABLE)) - table)}")


# ---- ops no OpInfo sample reaches through make_fx ---------------------------------------------------------------
aten = torch.ops.aten


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed + sum(shape)))


def _ints(*shape: int) -> torch.Tensor:
    return torch.randint(-20, 20, shape, generator=torch.Generator().manual_seed(sum(shape)))


Call = tuple[Any, tuple[Any, ...], dict[str, Any], "tuple[int, ...] | None"]


def _conv_backward(transposed: bool) -> Call:
    x, w = _randn(2, 4, 7, 6), _randn(4, 3, 3, 3) if transposed else _randn(6, 2, 3, 3)
    out = (torch.nn.functional.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1) if transposed
           else torch.nn.functional.conv2d(x, w, stride=2, padding=1, groups=2))
    return (aten.convolution_backward.default,
            (_randn(*out.shape, seed=1), x, w, [w.shape[1] if transposed else w.shape[0]], [2, 2], [1, 1], [1, 1],
             transposed, [1, 1] if transposed else [0, 0], 1 if transposed else 2, [True, True, True]), {}, None)


def _max_pool_backward() -> Call:
    x = _randn(2, 3, 9, 8)
    out, indices = aten.max_pool2d_with_indices(x, [3, 3], [2, 2], [1, 1])
    return (aten.max_pool2d_with_indices_backward.default,
            (_randn(*out.shape, seed=1), x, [3, 3], [2, 2], [1, 1], [1, 1], False, indices), {}, None)


def _layer_norm_backward() -> Call:
    x, w, b = _randn(3, 5, 8), _randn(8), _randn(8, seed=1)
    _, mean, rstd = aten.native_layer_norm(x, [8], w, b, 1e-5)
    return (aten.native_layer_norm_backward.default,
            (_randn(3, 5, 8, seed=2), x, [8], mean, rstd, w, b, [True, True, True]), {}, None)


def _group_norm_backward() -> Call:
    x, w, b = _randn(2, 6, 4, 5), _randn(6), _randn(6, seed=1)
    _, mean, rstd = aten.native_group_norm(x, w, b, 2, 6, 20, 3, 1e-5)
    return (aten.native_group_norm_backward.default,
            (_randn(2, 6, 4, 5, seed=2), x, mean, rstd, w, 2, 6, 20, 3, [True, True, True]), {}, None)


def _batch_norm(target: Any, training: bool | None, running: bool) -> Call:
    x, w, b = _randn(2, 3, 4, 5), _randn(3), _randn(3, seed=1)
    stats = (_randn(3, seed=2), _randn(3, seed=3).abs() + 0.5) if running else ()
    flag = () if training is None else (training,)
    return target, (x, w, b, *stats, *flag, 0.1, 1e-5), {}, None


def _image(*shape: int) -> torch.Tensor:
    return _randn(*shape, seed=7)


OUTSIDE_OPINFO: dict[str, Callable[[], Call]] = {
    # backward ops: OpInfo samples are forward calls
    "convolution_backward": lambda: _conv_backward(False),
    "convolution_backward_transposed": lambda: _conv_backward(True),
    "avg_pool2d_backward": lambda: (aten.avg_pool2d_backward.default,
                                    (_randn(2, 3, 5, 5, seed=1), _randn(2, 3, 9, 8), [3, 3], [2, 2], [1, 1], True,
                                     False, None), {}, None),
    "adaptive_avg_pool2d_backward": lambda: (aten._adaptive_avg_pool2d_backward.default,
                                             (_randn(2, 3, 3, 4, seed=1), _randn(2, 3, 7, 9)), {}, None),
    "max_pool2d_with_indices_backward": _max_pool_backward,
    "embedding_dense_backward": lambda: (aten.embedding_dense_backward.default,
                                         (_randn(3, 4, 5), torch.tensor([[1, 2, 2, 9], [0, 2, 1, 1], [5, 5, 5, 2]]),
                                          10, 2, True), {}, None),
    "native_layer_norm_backward": _layer_norm_backward,
    "native_group_norm_backward": _group_norm_backward,
    # ops capture keeps whole that make_fx decomposes, and core ops torch's decompositions remove before tracing
    "upsample_bilinear2d.vec": lambda: (aten.upsample_bilinear2d.vec, (_image(1, 2, 5, 6), None, False, [1.5, 2.0]),
                                        {}, None),
    "upsample_bilinear2d.vec_align_corners": lambda: (aten.upsample_bilinear2d.vec,
                                                      (_image(1, 2, 5, 6), [7, 9], True, None), {}, None),
    "upsample_bicubic2d.vec": lambda: (aten.upsample_bicubic2d.vec, (_image(1, 2, 5, 6), [7, 9], False, None), {},
                                       None),
    "upsample_linear1d.vec": lambda: (aten.upsample_linear1d.vec, (_image(1, 2, 5), [9], True, None), {}, None),
    "upsample_trilinear3d.vec": lambda: (aten.upsample_trilinear3d.vec,
                                         (_image(1, 2, 3, 4, 5), None, False, [2.0, 1.5, 1.3]), {}, None),
    "upsample_nearest1d.vec": lambda: (aten.upsample_nearest1d.vec, (_image(1, 2, 5), None, [2.5]), {}, None),
    "upsample_nearest2d.vec": lambda: (aten.upsample_nearest2d.vec, (_image(1, 2, 5, 6), [7, 9], None), {}, None),
    "upsample_nearest3d.vec": lambda: (aten.upsample_nearest3d.vec, (_image(1, 2, 3, 4, 5), [4, 6, 8], None), {},
                                       None),
    "upsample_nearest2d.default": lambda: (aten.upsample_nearest2d.default, (_image(1, 2, 5, 6), [7, 9]), {}, None),
    "upsample_nearest3d.default": lambda: (aten.upsample_nearest3d.default, (_image(1, 2, 3, 4, 5), [4, 6, 8]), {},
                                           None),
    "_upsample_nearest_exact2d.default": lambda: (aten._upsample_nearest_exact2d.default,
                                                  (_image(1, 2, 5, 6), [7, 9]), {}, None),
    "_upsample_nearest_exact3d.default": lambda: (aten._upsample_nearest_exact3d.default,
                                                  (_image(1, 2, 3, 4, 5), [4, 6, 8]), {}, None),
    "reflection_pad2d": lambda: (aten.reflection_pad2d.default, (_image(2, 3, 5, 6), [1, 2, 3, 0]), {}, None),
    "reflection_pad3d": lambda: (aten.reflection_pad3d.default, (_image(1, 2, 3, 4, 5), [1, 1, 2, 0, 1, 2]), {},
                                 None),
    "replication_pad2d": lambda: (aten.replication_pad2d.default, (_image(2, 3, 5, 6), [-2, 3, 1, 4]), {}, None),
    "replication_pad3d": lambda: (aten.replication_pad3d.default, (_image(1, 2, 3, 4, 5), [2, 1, 0, 3, -1, 2]), {},
                                  None),
    "col2im": lambda: (aten.col2im.default, (_randn(2, 12, 20), [5, 6], [2, 2], [1, 1], [0, 0], [1, 1]), {}, None),
    "col2im_strided_padded": lambda: (aten.col2im.default, (_randn(1, 18, 12), [6, 7], [3, 2], [1, 2], [1, 1],
                                                            [2, 2]), {}, None),
    "_embedding_bag": lambda: (aten._embedding_bag.default,
                               (_randn(10, 3), torch.tensor([1, 2, 4, 5, 4, 3, 2, 9]), torch.tensor([0, 4, 4])),
                               {"mode": 1, "padding_idx": 2}, (0,)),
    "_native_batch_norm_legit_no_training": lambda: _batch_norm(
        aten._native_batch_norm_legit_no_training.default, None, True),
    "_native_batch_norm_legit.no_stats": lambda: _batch_norm(aten._native_batch_norm_legit.no_stats, True, False),
    "_native_batch_norm_legit_functional": lambda: _batch_norm(
        aten._native_batch_norm_legit_functional.default, True, True),
    "native_dropout_in_eval": lambda: (aten.native_dropout.default, (_randn(3, 4), 0.5, False), {}, None),
    "bitwise_and.Scalar": lambda: (aten.bitwise_and.Scalar, (_ints(3, 4), 6), {}, None),
    "bitwise_or.Scalar": lambda: (aten.bitwise_or.Scalar, (_ints(3, 4), 6), {}, None),
    "bitwise_xor.Scalar": lambda: (aten.bitwise_xor.Scalar, (_ints(3, 4), 6), {}, None),
    "sub.Scalar": lambda: (aten.sub.Scalar, (_randn(3, 4), 2.5), {}, None),
    "pow.Scalar": lambda: (aten.pow.Scalar, (2.0, _randn(3, 4)), {}, None),
    "div.Scalar_mode": lambda: (aten.div.Scalar_mode, (_randn(3, 4) * 10, -3.0), {"rounding_mode": "floor"}, None),
    "div.Scalar_mode_integer": lambda: (aten.div.Scalar_mode, (_ints(3, 4), 3), {"rounding_mode": "trunc"}, None),
    "copy": lambda: (aten.copy.default, (_randn(3, 4), _ints(4)), {}, None),
    "scatter.value": lambda: (aten.scatter.value, (_randn(3, 5), 1, torch.tensor([[0, 4], [1, 1], [3, 2]]), 7.5),
                              {}, None),
    "var.dim": lambda: (aten.var.dim, (_randn(3, 4, 5), [1, 2], False, True), {}, None),
}
"""Hand-made calls of the table ops that no OpInfo sample reaches through make_fx, by case name."""


@pytest.mark.parametrize("case", list(OUTSIDE_OPINFO))
def test_op_outside_opinfo_matches_torch(case: str) -> None:
    target, args, kwargs, outputs = OUTSIDE_OPINFO[case]()
    module, tensors = harness.op_module(target, args, kwargs, outputs)
    outcome = harness.check_traced(module, tensors)
    assert outcome.status == "pass", outcome.detail

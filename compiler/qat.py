"""Quantization-aware training: a functional model whose linears compute on crossgraph's int8 grids, trainable
through the compiled training step (`training.make_train_step`) unchanged.

`fake_quant(model)` returns the same model (parameters, config) whose `apply` runs the original one under a
`TorchFunctionMode` that rewrites every `F.linear(x, w, b)` whose weight `w` is a selected parameter leaf into
`F.linear(fq_x(x), fq_w(w), b)`:

- weights: exactly the grid `graphs.quant.quantize_weight_int8` gives (symmetric per output channel, absmax / 127
  of the current weight); `w` is [out, in] as `F.linear` takes it, so the grid is computed on `w.T` ([K, N]).
- activations (optional): the uint8 grid of ONNX DynamicQuantizeLinear (`graphs.quant.dynamic_quantize`), per
  tensor, computed from the activation on every call, as `crossgraph::dynamic_quant_linear` does when deployed.

Both reuse the functions in `graphs.quant`, so the training grid and the deployment grid are one piece of code.
The weight grid is also int8_weight_only's (MatMulNBits, 8 bits per channel, dequantizes to the same values), so
`activations=False` trains for that scheme and the default for dynamic int8. Gradients pass straight through
(STE): the value is `v + (q(v) - v).detach()`, which equals `q(v)` exactly (q(v) is 0 or within a factor 2 of v,
so q(v) - v is exact by Sterbenz's lemma) and differentiates as the identity; scales and zero points are not
differentiated. Inside the step compiled by `torch.compile(backend="inductor", fullgraph=True)` Dynamo traces
the mode, so the rounding is part of the one compiled training graph.

`torch.fake_quantize_per_channel_affine` is not used: it multiplies by 1 / scale instead of dividing by scale and
rounds differently near ties (measured: of weights within 2 ulp of a half step, 3.7% land one step away from
`quantize_weight_int8`'s value), and it zeroes the gradient of values outside the clamp range.

Which linears: a leaf is fake-quantized where `F.linear` reads it as its weight and `select` accepts it (default:
every 2-D floating leaf); the activation entering a linear is quantized only when its weight is. Embedding lookups
and norms stay float, and so do products written as `h @ w.T` (GPT-2's tied LM head), although the deployment
passes (`passes/quantize.py`) quantize such an mm too: with a torch function mode active, Dynamo does not route the
`.T` property through the mode as eager does (a mode that tracks `.T` views computed differently compiled and
eager, silently), so only `F.linear` is intercepted.

After training, `export_weights(params, quantized_paths(qat_model, *batch))` puts those leaves on the grid:
`quantize_weight_int8` then gives the trained int8 values back exactly, and the plain model on the exported tree
computes what the weights-only QAT model computes. Deployment does not need it (quantizing the trained weights
directly gives the same int8 values and scales that training saw); it is the float checkpoint equal to the
deployed weights. Two cases where the export and the QAT forward part: a leaf read both by F.linear and by
something else (a tied embedding used as the LM head through F.linear) is exported on the grid for every use, and
a parameter in a low-precision dtype holds the grid value rounded to that dtype (the grid is float32).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode

from crossgraph.graphs import FunctionalModel, InputError, flatten_tree, unflatten_tree
from crossgraph.graphs.quant import dynamic_quantize, quantize_weight_int8

Select = Callable[[str, Tensor], bool]
"""Whether the leaf at a tree path may be fake-quantized: (path, leaf) -> bool."""

WEIGHT_SCHEMES = ("int8",)
"""The weight grids fake_quant knows (None: weights stay float)."""


# ---- grids and straight-through estimators ---------------------------------------------------------------------
def weight_grid(weight: Tensor) -> Tensor:
    """W [out, in] moved onto quantize_weight_int8's grid (per output channel), in W's dtype: the deployed weight."""
    q, scale = quantize_weight_int8(weight.T)
    return (q.float() * scale).T.to(weight.dtype)


def activation_grid(x: Tensor) -> Tensor:
    """x moved onto DynamicQuantizeLinear's per-tensor uint8 grid, in x's dtype: what the deployed op multiplies."""
    q, scale, zero = dynamic_quantize(x)
    return ((q - zero) * scale).to(x.dtype)


def straight_through(value: Tensor, grid: Callable[[Tensor], Tensor]) -> Tensor:
    """`grid(value)` forward, identity backward: the STE that lets rounding be trained through."""
    return value + (grid(value.detach()) - value).detach()


def fake_quant_weight(weight: Tensor) -> Tensor:
    """The weight on the int8 grid, with the gradient passed straight through."""
    return straight_through(weight, weight_grid)


def fake_quant_activation(x: Tensor) -> Tensor:
    """The activation on the dynamic uint8 grid, with the gradient passed straight through."""
    return straight_through(x, activation_grid)


# ---- the model -----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class QATConfig:
    """What a fake-quantized model rounds: its weight grid (or None), whether activations too, and which leaves."""

    weights: str | None
    activations: bool
    paths: frozenset[str]


def _linear_args(args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor | None]:
    """(input, weight, bias) of an F.linear call, however its arguments were passed."""
    bound = {**dict(zip(("input", "weight", "bias"), args)), **kwargs}
    return bound["input"], bound["weight"], bound.get("bias")


class _FakeQuantLinears(TorchFunctionMode):
    """Rewrites F.linear(x, w, b) whose w is one of `leaves` to read fake-quantized w (and x), recording paths."""

    def __init__(self, leaves: Sequence[tuple[str, Tensor]], config: QATConfig, seen: list[str] | None = None):
        super().__init__()
        self.leaves, self.config, self.seen = leaves, config, seen

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        if func is not F.linear:
            return func(*args, **kwargs)
        x, w, b = _linear_args(args, kwargs)
        path = next((path for path, leaf in self.leaves if w is leaf), None)
        if path is None:
            return func(*args, **kwargs)
        if self.seen is not None:
            self.seen.append(path)
        if self.config.weights is not None:
            w = fake_quant_weight(w)
        if self.config.activations:
            x = fake_quant_activation(x)
        return func(x, w, b)


@dataclasses.dataclass(frozen=True)
class FakeQuantApply:
    """A model's apply run with its selected linears fake-quantized: the `apply` of fake_quant's model."""

    base: Callable[..., Any]
    config: QATConfig

    def _leaves(self, params: Any) -> list[tuple[str, Tensor]]:
        flat = flatten_tree(params)
        return [(path, flat[path]) for path in sorted(self.config.paths)]

    def __call__(self, params: Any, *inputs: Any) -> Any:
        with _FakeQuantLinears(self._leaves(params), self.config):
            return self.base(params, *inputs)

    def quantized_paths(self, params: Any, *inputs: Any) -> tuple[str, ...]:
        """The leaves this apply fake-quantizes on `inputs`, in first-use order (one eager forward)."""
        seen: list[str] = []
        with torch.no_grad(), _FakeQuantLinears(self._leaves(params), self.config, seen):
            self.base(params, *inputs)
        return tuple(dict.fromkeys(seen))


def _selector(select: Select | Sequence[str] | None) -> Select:
    """A predicate from fnmatch patterns on the dotted path (any matches), a predicate, or None (every leaf)."""
    if select is None:
        return lambda path, leaf: True
    if callable(select):
        return select
    patterns = [select] if isinstance(select, str) else list(select)
    return lambda path, leaf: any(fnmatch.fnmatchcase(path, p) for p in patterns)


def fake_quant(model: FunctionalModel, *, weights: str | None = "int8", activations: bool = True,
               select: Select | Sequence[str] | None = None) -> FunctionalModel:
    """`model` with its linears computing on int8 weights (and dynamic uint8 activations), trainable by STE.

    `select` narrows which 2-D floating leaves may be quantized (a predicate (path, leaf) -> bool, or fnmatch
    patterns such as "h.*.mlp.*"); only those F.linear reads as its weight are. The selection is resolved here on
    model.params, so nothing but dict lookups runs inside a compiled step. The result has no Flax reference: its
    Flax twin would compute in float.
    """
    if weights is not None and weights not in WEIGHT_SCHEMES:
        raise InputError(f"unknown weight scheme '{weights}'; known: {', '.join(WEIGHT_SCHEMES)} (or None)")
    accept = _selector(select)
    paths = frozenset(path for path, leaf in flatten_tree(model.params).items()
                      if leaf.ndim == 2 and leaf.is_floating_point() and accept(path, leaf))
    if not paths:
        raise InputError(f"select={select!r} accepts no 2-D floating parameter of '{model.name}'")
    config = QATConfig(weights, activations, paths)
    return dataclasses.replace(model, apply=FakeQuantApply(model.apply, config), flax_reference=None)


def quantized_paths(model: FunctionalModel, *inputs: Any) -> tuple[str, ...]:
    """The parameter paths a fake_quant model fake-quantizes when applied to `inputs` (one eager forward)."""
    if not isinstance(model.apply, FakeQuantApply):
        raise InputError(f"model '{model.name}' is not fake-quantized (build it with qat.fake_quant)")
    return model.apply.quantized_paths(model.params, *inputs)


def export_weights(params: Any, paths: Sequence[str]) -> dict[str, Any]:
    """The tree with the leaves at `paths` on the int8 weight grid (lossless to quantize); others unchanged."""
    flat = flatten_tree(params)
    missing = sorted(set(paths) - set(flat))
    if missing:
        raise InputError(f"no parameter at {', '.join(missing)}")
    return unflatten_tree({path: weight_grid(leaf.detach()) if path in paths else leaf
                           for path, leaf in flat.items()})


__all__ = ["FakeQuantApply", "QATConfig", "Select", "WEIGHT_SCHEMES", "activation_grid", "export_weights",
           "fake_quant", "fake_quant_activation", "fake_quant_weight", "quantized_paths", "straight_through",
           "weight_grid"]

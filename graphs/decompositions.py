"""Decompositions capture applies on top of torch's core-ATen table, for ops no runtime can take whole.

Mixture-of-Experts layers run their experts as one grouped matmul: rows of `input` sorted by expert, `offs[i]` the
end of expert i's rows (a cumsum of per-expert counts). On CPU Hugging Face transformers exports it as its own
custom op `transformers::grouped_mm_fallback` (a Python loop over `offs.tolist()`), with bfloat16 weights as
`aten._grouped_mm` (a CUDA/CPU kernel). ONNX and JAX have neither, and a loop over data values is no graph, so
both become a loop-free form of the same math here, once, for every target (Inductor and TensorRT included):

    group[r] = #(offs <= r)                       the expert of row r (== E: past offs[-1], a zero row)
    out[r]   = input[r] @ weight[group[r]]

computed as every expert on every row, each row then picking its own expert's result (an [E, S, N] intermediate,
E times the grouped FLOPs) when E <= K, else one [S, K, N] gather of each row's weight and a bmm (the grouped
FLOPs, S*K*N memory): whichever intermediate is smaller. A row's result is a dot product of the same numbers as in
the loop; only the accumulation order can differ (float noise, as between any two matmul kernels).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

aten = torch.ops.aten


def grouped_mm(input: Tensor, weight: Tensor, offs: Tensor) -> Tensor:
    """[S, K] rows grouped by the non-decreasing ends `offs` [E] times `weight` [E, K, N] -> [S, N]; rows at or
    past offs[-1] are zeros (transformers' fallback leaves them so; aten._grouped_mm leaves them undefined)."""
    rows = torch.arange(input.shape[0], device=input.device)
    group = _groups(rows, offs)
    experts, k = weight.shape[0], weight.shape[1]
    inside = group < experts
    group = group.clamp(max=experts - 1)
    if experts <= k:
        every = torch.matmul(input.unsqueeze(0), weight)          # [E, S, N]
        picked = every[group, rows]
    else:
        picked = torch.bmm(input.unsqueeze(1), weight[group]).squeeze(1)
    return torch.where(inside.unsqueeze(1), picked, torch.zeros((), dtype=picked.dtype, device=picked.device))


def _groups(rows: Tensor, offs: Tensor) -> Tensor:
    """The group of each row index: how many group ends lie at or before it (E for rows past the last end)."""
    return (rows.unsqueeze(1) >= offs.to(torch.int64).unsqueeze(0)).sum(1)


def _transformers_grouped_mm(input: Tensor, weight: Tensor, offs: Tensor) -> Tensor:
    return grouped_mm(input, weight, offs)


def _aten_grouped_mm(input: Tensor, mat2: Tensor, offs: Tensor | None = None, bias: Tensor | None = None,
                     out_dtype: torch.dtype | None = None) -> Any:
    """aten._grouped_mm's forward forms: 2-d input with offs x 3-d weights (MoE experts), and 3-d x 3-d (a bmm).
    The 2-d x 2-d form (grouped over K, for weight gradients) stays whole (NotImplemented): targets name it."""
    if input.dim() == 2 and mat2.dim() == 3 and offs is not None:
        out = grouped_mm(input, mat2, offs)
        if bias is not None:
            group = _groups(torch.arange(input.shape[0], device=input.device), offs)
            out = out + bias[group.clamp(max=mat2.shape[0] - 1)]
    elif input.dim() == 3 and mat2.dim() == 3 and offs is None:
        out = torch.bmm(input, mat2)
        if bias is not None:
            out = out + bias.unsqueeze(1)
    else:
        return NotImplemented
    return out if out_dtype is None else out.to(out_dtype)


def table() -> dict[Any, Callable[..., Any]]:
    """The decompositions, keyed by OpOverload; transformers' op only once transformers has registered it."""
    out: dict[Any, Callable[..., Any]] = {aten._grouped_mm.default: _aten_grouped_mm}
    fallback = _custom_op("transformers", "grouped_mm_fallback")
    if fallback is not None:
        out[fallback] = _transformers_grouped_mm
    return out


def _custom_op(namespace: str, name: str) -> Any:
    """torch.ops.<namespace>.<name>.default if that op is registered in this process, else None."""
    try:
        return getattr(getattr(torch.ops, namespace), name).default
    except (AttributeError, RuntimeError):
        return None

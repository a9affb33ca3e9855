"""The crossgraph op dialect: fused ops that passes put into a Graph and every target translates.

Each op is a `torch.library` custom op with a reference implementation in plain torch (what eager runs, and the
decomposition a target may fall back to) and a fake kernel (shapes for export and the pass verifier). Adding an
op means: define it here, then add one entry to each target's table (inductor, onnx, jax, tensorrt); a missing
entry is an UnsupportedOpError, never a silent fallback.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from crossgraph.graphs.quant import QUANT_OPS


@torch.library.custom_op("crossgraph::attention", mutates_args=())
def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, scale: float) -> Tensor:
    """softmax(q @ k^T * scale [masked]) @ v over q [B, H, Sq, D], k and v [B, Hkv, Sk, D] (H a multiple of Hkv:
    grouped-query attention). `mask` is None, a bool mask (True: attend) or an additive float mask, broadcast to
    [B, H, Sq, Sk]; `causal` also hides keys after each query (aligned to the end when Sq < Sk).

    As torch's scaled_dot_product_attention: hidden keys score -inf, and a query row whose masks leave no key
    (every key hidden by the bool or causal mask or given -inf by the float mask; causal with Sq > Sk hides all
    keys from the first Sq - Sk queries) gives zeros, not the mean of v a finite fill would give. A finite float
    mask (finfo.min) hides nothing for this purpose. Targets find those rows from the masks, so they agree with
    this wherever q and k are finite; a NaN input still gives NaN."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = (q @ k.transpose(-2, -1)) * scale
    hidden = None
    if causal:
        sq, sk = q.shape[-2], k.shape[-2]
        hidden = ~torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(sk - sq)
    if mask is not None and mask.dtype == torch.bool:
        hidden = ~mask if hidden is None else hidden | ~mask
    if hidden is not None:  # added, not filled, as sdpa does: a NaN score stays NaN
        scores = scores + torch.where(hidden, float("-inf"), 0.0).to(scores.dtype)
    if mask is not None and mask.dtype != torch.bool:
        scores = scores + mask
    probs = torch.softmax(scores, dim=-1)
    if hidden is not None or mask is not None:  # sdpa's safe softmax: rows of -inf only give zeros, not NaN
        probs = probs.masked_fill((scores == float("-inf")).all(dim=-1, keepdim=True), 0.0)
    return probs @ v


@attention.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, causal: bool, scale: float) -> Tensor:
    torch._check(q.shape[1] % k.shape[1] == 0, lambda: "query heads must be a multiple of key/value heads")
    return q.new_empty((*q.shape[:-1], v.shape[-1]))


@torch.library.custom_op("crossgraph::add_layer_norm", mutates_args=())
def add_layer_norm(x: Tensor, residual: Tensor, weight: Tensor, bias: Tensor | None,
                   eps: float) -> tuple[Tensor, Tensor]:
    """(layer_norm(x + residual) over the last dim, x + residual): a residual add and the norm after it."""
    total = x + residual
    return F.layer_norm(total, total.shape[-1:], weight, bias, eps), total


@add_layer_norm.register_fake
def _(x: Tensor, residual: Tensor, weight: Tensor, bias: Tensor | None, eps: float) -> tuple[Tensor, Tensor]:
    total = torch.empty_like(x + residual)  # the add's layout; the norm's output is contiguous, as layer_norm's
    return total.new_empty(total.shape), total


@torch.library.custom_op("crossgraph::bias_gelu", mutates_args=())
def bias_gelu(x: Tensor, bias: Tensor, approximate: str) -> Tensor:
    """gelu(x + bias) with torch's `approximate` ("none": erf, "tanh": the tanh form GPT-2 uses)."""
    return F.gelu(x + bias, approximate=approximate)


@bias_gelu.register_fake
def _(x: Tensor, bias: Tensor, approximate: str) -> Tensor:
    return torch.empty_like(x + bias)


@torch.library.custom_op("crossgraph::rms_norm", mutates_args=())
def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """weight * (x / sqrt(mean(x^2, last dim) + eps)), normalized in float32 and cast back (Llama's RMSNorm)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


@rms_norm.register_fake
def _(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    return torch.empty_like(weight * x)


@torch.library.custom_op("crossgraph::rotary_embedding", mutates_args=())
def rotary_embedding(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary position embedding, half-split (Llama's and GPT-NeoX's `rotate_half`, not interleaved):
    x * cat(cos, cos) + rotate_half(x) * cat(sin, sin) over x [..., D], rotate_half(x) = cat(-x[D/2:], x[:D/2]).
    cos and sin [..., D/2] hold each position's angles once (a model's full-width cos repeats them for both
    halves) and broadcast against x's leading dims: [S, D/2], or [B, 1, S, D/2] for x [B, H, S, D]."""
    cos, sin = torch.cat((cos, cos), dim=-1), torch.cat((sin, sin), dim=-1)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


@rotary_embedding.register_fake
def _(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    for angles in (cos, sin):
        torch._check(x.shape[-1] == 2 * angles.shape[-1],
                     lambda: "cos and sin must be half as wide as x (the angles of one half)")
    return torch.empty_like(x * torch.cat((cos, cos), dim=-1) * torch.cat((sin, sin), dim=-1))


OPS: dict[str, torch._ops.OpOverload] = {
    "attention": torch.ops.crossgraph.attention.default,
    "add_layer_norm": torch.ops.crossgraph.add_layer_norm.default,
    "bias_gelu": torch.ops.crossgraph.bias_gelu.default,
    "rms_norm": torch.ops.crossgraph.rms_norm.default,
    "rotary_embedding": torch.ops.crossgraph.rotary_embedding.default,
    **QUANT_OPS,
}
"""Every dialect op by name; each target's table must have an entry for each."""

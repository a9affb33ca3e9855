"""SPEC for the README's "when parity fails" walkthrough: one attention block over a left-padded batch, so the
padded query rows attend to no key at all (torch's scaled_dot_product_attention gives zeros there).

    crossgraph check docs/examples/padded_attention.py:left_padded --targets eager,onnx,jax --passes none
"""

import torch
import torch.nn.functional as F
from torch import nn


class PaddedAttention(nn.Module):
    """Embedding, one causal multi-head attention over the kept tokens, output projection."""

    def __init__(self, vocab: int = 64, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, ids: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, s = ids.shape
        q, k, v = self.qkv(self.embed(ids)).view(b, s, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        causal = torch.ones(s, s, dtype=torch.bool).tril()
        mask = causal & keep[:, None, None, :].bool() & keep[:, None, :, None].bool()
        y = self.attend(q, k, v, mask)
        return self.out(y.transpose(1, 2).reshape(b, s, -1))

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """sdpa with a bool mask: a query row that keeps no key gives zeros."""
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def left_padded() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    """The model and a batch of two: the first left-padded by two tokens."""
    ids = torch.randint(0, 64, (2, 6))
    keep = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    return PaddedAttention().eval(), (ids, keep)

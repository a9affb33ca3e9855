"""BERT as a functional encoder: word + position + token-type embeddings, post-norm blocks, exact-erf GELU.

The parameter tree uses Hugging Face BertModel's names (`encoder.layer.0.attention.self.query.weight`, ...) and
torch's Linear [out, in] layout, so importing a checkpoint is a rename-free copy. There is no pooler: `apply`
returns last_hidden_state, and the tree equals BertModel(add_pooling_layer=False)'s (an importer drops
`pooler.*`). Attention is written out (scores, additive padding mask, softmax) so fusion passes see the pattern.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
import torch.nn.functional as F

from crossgraph.graphs import FunctionalModel


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """BERT hyperparameters; the defaults are BERT-base (108.9M parameters without the pooler)."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    def __post_init__(self) -> None:
        sizes = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "layer_norm_eps"}
        bad = [f"{name}={value}" for name, value in sizes.items() if value < 1]
        if bad:
            raise ValueError(f"sizes must be positive: {', '.join(bad)}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                             f"{self.num_attention_heads}")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps}")

    @classmethod
    def tiny(cls) -> "BertConfig":
        return cls(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=64, max_position_embeddings=64, type_vocab_size=2)

    @classmethod
    def base(cls) -> "BertConfig":
        return cls()


def init(config: BertConfig, seed: int = 0) -> dict:
    """BERT's initialization: N(0, 0.02) weights and embeddings, zero biases, LayerNorm ones/zeros."""
    g = torch.Generator().manual_seed(seed)
    d, ff = config.hidden_size, config.intermediate_size

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.02

    def linear(n_out: int, n_in: int) -> dict:
        return {"weight": normal(n_out, n_in), "bias": torch.zeros(n_out)}

    def layer_norm() -> dict:
        return {"weight": torch.ones(d), "bias": torch.zeros(d)}

    def layer() -> dict:
        return {"attention": {"self": {k: linear(d, d) for k in ("query", "key", "value")},
                              "output": {"dense": linear(d, d), "LayerNorm": layer_norm()}},
                "intermediate": {"dense": linear(ff, d)},
                "output": {"dense": linear(d, ff), "LayerNorm": layer_norm()}}

    embeddings = {"word_embeddings": {"weight": normal(config.vocab_size, d)},
                  "position_embeddings": {"weight": normal(config.max_position_embeddings, d)},
                  "token_type_embeddings": {"weight": normal(config.type_vocab_size, d)},
                  "LayerNorm": layer_norm()}
    return {"embeddings": embeddings, "encoder": {"layer": {str(i): layer() for i in range(config.num_hidden_layers)}}}


def _linear(p: dict, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, p["weight"], p["bias"])


def _layer_norm(p: dict, x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], p["weight"], p["bias"], eps)


def embed(p: dict, input_ids: torch.Tensor, token_type_ids: torch.Tensor, eps: float) -> torch.Tensor:
    """Word + position (0..T-1) + token-type embeddings, then LayerNorm: [B, T] ids -> [B, T, D]."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    x = (F.embedding(input_ids, p["word_embeddings"]["weight"])
         + F.embedding(positions, p["position_embeddings"]["weight"])
         + F.embedding(token_type_ids, p["token_type_embeddings"]["weight"]))
    return _layer_norm(p["LayerNorm"], x, eps)


def padding_bias(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """attention_mask [B, T] of 1/0 -> additive score bias [B, 1, 1, T]: 0 for real keys, dtype's min for padding."""
    keep = attention_mask[:, None, None, :].to(dtype)
    return (1.0 - keep) * torch.finfo(dtype).min


def self_attention(p: dict, x: torch.Tensor, bias: torch.Tensor, n_head: int) -> torch.Tensor:
    """Bidirectional multi-head self-attention over x [B, T, D], padded keys suppressed by `bias`."""
    b, t, d = x.shape
    q, k, v = (_linear(p[name], x).view(b, t, n_head, d // n_head).transpose(1, 2)
               for name in ("query", "key", "value"))
    scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(d // n_head)) + bias
    y = torch.softmax(scores, dim=-1) @ v
    return y.transpose(1, 2).reshape(b, t, d)


def layer(p: dict, x: torch.Tensor, bias: torch.Tensor, config: BertConfig) -> torch.Tensor:
    """One post-norm encoder block: LN(x + attention(x)), then LN(h + FFN(h)) with exact GELU."""
    eps = config.layer_norm_eps
    attn = p["attention"]
    y = _linear(attn["output"]["dense"], self_attention(attn["self"], x, bias, config.num_attention_heads))
    h = _layer_norm(attn["output"]["LayerNorm"], x + y, eps)
    ff = _linear(p["output"]["dense"], F.gelu(_linear(p["intermediate"]["dense"], h)))
    return _layer_norm(p["output"]["LayerNorm"], h + ff, eps)


def apply(params: dict, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor, *,
          config: BertConfig) -> torch.Tensor:
    """(input_ids, attention_mask, token_type_ids) [B, T] int64 -> last_hidden_state [B, T, D]."""
    x = embed(params["embeddings"], input_ids, token_type_ids, config.layer_norm_eps)
    bias = padding_bias(attention_mask, x.dtype)
    layers = params["encoder"]["layer"]
    for i in range(len(layers)):
        x = layer(layers[str(i)], x, bias, config)
    return x


def model(config: BertConfig, seed: int = 0) -> FunctionalModel:
    """BERT with fresh parameters, bound to its config and its Flax reference."""
    return FunctionalModel(name="bert", apply=functools.partial(apply, config=config), params=init(config, seed),
                           config=config, flax_reference="crossgraph.models.bert_flax:from_params")


def example_inputs(config: BertConfig, batch: int = 2, seq: int = 8,
                   seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Padded int64 (input_ids, attention_mask, token_type_ids): row 0 keeps 3/4 of `seq`, the others a random length.

    Padding (mask 0) is trailing, with token id 0 and type 0 as tokenizers write it; each row's second half of real
    tokens is segment B (token type 1) when the config has two token types.
    """
    if seq > config.max_position_embeddings:
        raise ValueError(f"sequence length {seq} exceeds max_position_embeddings {config.max_position_embeddings}")
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, seq + 1, (batch,), generator=g)
    lengths[0] = seq - seq // 4
    positions = torch.arange(seq)[None, :]
    attention_mask = (positions < lengths[:, None]).long()
    input_ids = torch.randint(0, config.vocab_size, (batch, seq), generator=g) * attention_mask
    second_half = (positions >= (lengths[:, None] + 1) // 2).long() * attention_mask
    token_type_ids = second_half * min(1, config.type_vocab_size - 1)
    return input_ids, attention_mask, token_type_ids


def dynamic_shapes(config: BertConfig) -> tuple[dict[int, torch.export.Dim], ...]:
    """Symbolic batch and sequence (up to max_position_embeddings), shared by all three inputs."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    seq = torch.export.Dim("seq", min=1, max=config.max_position_embeddings)
    return ({0: batch, 1: seq},) * 3


def tiny() -> tuple[FunctionalModel, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """SPEC factory: `crossgraph check crossgraph.models.bert:tiny`."""
    config = BertConfig.tiny()
    return model(config), example_inputs(config)


def base() -> tuple[FunctionalModel, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """SPEC factory: BERT-base (108.9M, no pooler) at batch 1, sequence 128."""
    config = BertConfig.base()
    return model(config), example_inputs(config, batch=1, seq=128)

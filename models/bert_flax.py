"""BERT in Flax NNX, reading the torch model's parameter tree; attention via jax.nn.dot_product_attention.

Module attributes carry Hugging Face's names, so the Flax state tree has the torch tree's shape.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from crossgraph.models import convert
from crossgraph.models.bert import BertConfig


class Embeddings(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs) -> None:
        d = config.hidden_size
        self.word_embeddings = nnx.Embed(config.vocab_size, d, rngs=rngs)
        self.position_embeddings = nnx.Embed(config.max_position_embeddings, d, rngs=rngs)
        self.token_type_embeddings = nnx.Embed(config.type_vocab_size, d, rngs=rngs)
        self.LayerNorm = nnx.LayerNorm(d, epsilon=config.layer_norm_eps, rngs=rngs)

    def __call__(self, input_ids: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        positions = jnp.arange(input_ids.shape[1])[None]
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return self.LayerNorm(x + self.token_type_embeddings(token_type_ids))


class SelfAttention(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs) -> None:
        d = config.hidden_size
        self.n_head = config.num_attention_heads
        self.query = nnx.Linear(d, d, rngs=rngs)
        self.key = nnx.Linear(d, d, rngs=rngs)
        self.value = nnx.Linear(d, d, rngs=rngs)

    def __call__(self, x: jax.Array, keep: jax.Array) -> jax.Array:
        """x [B, T, D], keep [B, 1, 1, T] (True for real keys) -> [B, T, D]."""
        b, t, d = x.shape
        q, k, v = (proj(x).reshape(b, t, self.n_head, d // self.n_head) for proj in (self.query, self.key, self.value))
        return jax.nn.dot_product_attention(q, k, v, mask=keep).reshape(b, t, d)


class Output(nnx.Module):
    """Projection back to the hidden size, then the residual add and LayerNorm (post-norm)."""

    def __init__(self, n_in: int, config: BertConfig, *, rngs: nnx.Rngs) -> None:
        self.dense = nnx.Linear(n_in, config.hidden_size, rngs=rngs)
        self.LayerNorm = nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, rngs=rngs)

    def __call__(self, y: jax.Array, residual: jax.Array) -> jax.Array:
        return self.LayerNorm(self.dense(y) + residual)


class Attention(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs) -> None:
        self.self = SelfAttention(config, rngs=rngs)
        self.output = Output(config.hidden_size, config, rngs=rngs)

    def __call__(self, x: jax.Array, keep: jax.Array) -> jax.Array:
        return self.output(self.self(x, keep), x)


class Intermediate(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs) -> None:
        self.dense = nnx.Linear(config.hidden_size, config.intermediate_size, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.gelu(self.dense(x), approximate=False)


class Layer(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs) -> None:
        self.attention = Attention(config, rngs=rngs)
        self.intermediate = Intermediate(config, rngs=rngs)
        self.output = Output(config.intermediate_size, config, rngs=rngs)

    def __call__(self, x: jax.Array, keep: jax.Array) -> jax.Array:
        h = self.attention(x, keep)
        return self.output(self.intermediate(h), h)


class Encoder(nnx.Module):
    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs) -> None:
        self.layer = nnx.List([Layer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])

    def __call__(self, x: jax.Array, keep: jax.Array) -> jax.Array:
        for layer in self.layer:
            x = layer(x, keep)
        return x


class Bert(nnx.Module):
    """(input_ids, attention_mask, token_type_ids) [B, T] -> last_hidden_state [B, T, D]; no pooler."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs) -> None:
        self.embeddings = Embeddings(config, rngs=rngs)
        self.encoder = Encoder(config, rngs=rngs)

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array, token_type_ids: jax.Array) -> jax.Array:
        keep = attention_mask.astype(bool)[:, None, None, :]
        return self.encoder(self.embeddings(input_ids, token_type_ids), keep)


def _output(p: dict[str, Any]) -> dict[str, Any]:
    return {"dense": convert.linear(p["dense"]), "LayerNorm": convert.norm(p["LayerNorm"])}


def _layer(p: dict[str, Any]) -> dict[str, Any]:
    attn = p["attention"]
    return {"attention": {"self": {k: convert.linear(attn["self"][k]) for k in ("query", "key", "value")},
                          "output": _output(attn["output"])},
            "intermediate": {"dense": convert.linear(p["intermediate"]["dense"])},
            "output": _output(p["output"])}


def from_params(config: BertConfig, params: dict[str, Any]) -> Bert:
    """The Flax BERT holding `params` (a jax tree in the torch model's layout)."""
    emb = params["embeddings"]
    embeddings = {k: convert.embed(emb[k]) for k in ("word_embeddings", "position_embeddings", "token_type_embeddings")}
    embeddings["LayerNorm"] = convert.norm(emb["LayerNorm"])
    pure = {"embeddings": embeddings,
            "encoder": {"layer": {int(i): _layer(p) for i, p in params["encoder"]["layer"].items()}}}
    return convert.build_nnx(lambda: Bert(config, rngs=nnx.Rngs(0)), pure)

"""Llama in Flax NNX, reading the torch model's parameter tree; attention via jax.nn.dot_product_attention.

Keys/values live as [B, S, KV, head_dim] inside (jax's attention layout); the cache form takes and returns them
in the torch model's [num_layers, B, KV, S, head_dim].
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from crossgraph.models import convert
from crossgraph.models.llama import LlamaConfig

KVCache = tuple[jax.Array, jax.Array]


def rope_angles(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos and sin [T, head_dim / 2] of each position's angle for each frequency pair."""
    inv_freq = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles = positions.astype(jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.cos(angles), jnp.sin(angles)


def rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x [B, T, H, head_dim] pairing dimension i with i + head_dim / 2 (Hugging Face's convention)."""
    x1, x2 = jnp.split(x, 2, axis=-1)
    c, s = cos[:, None, :], sin[:, None, :]
    return jnp.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], axis=-1)


class Attention(nnx.Module):
    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs) -> None:
        d, hd = config.hidden_size, config.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, hd
        self.q_proj = nnx.Linear(d, self.num_heads * hd, use_bias=False, rngs=rngs)
        self.k_proj = nnx.Linear(d, self.num_kv_heads * hd, use_bias=False, rngs=rngs)
        self.v_proj = nnx.Linear(d, self.num_kv_heads * hd, use_bias=False, rngs=rngs)
        self.o_proj = nnx.Linear(self.num_heads * hd, d, use_bias=False, rngs=rngs)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, cache: KVCache | None = None
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x [B, T, D] -> output, keys, values; with a cache, the new positions follow the cached ones."""
        b, t, _ = x.shape
        q = rope(self.q_proj(x).reshape(b, t, self.num_heads, self.head_dim), cos, sin)
        k = rope(self.k_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(x).reshape(b, t, self.num_kv_heads, self.head_dim)
        if cache is None:
            y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        else:
            k, v = jnp.concatenate([cache[0], k], axis=1), jnp.concatenate([cache[1], v], axis=1)
            y = jax.nn.dot_product_attention(q, k, v, mask=offset_causal_mask(t, k.shape[1]))
        return self.o_proj(y.reshape(b, t, -1)), k, v


def offset_causal_mask(t: int, s: int) -> jax.Array:
    """[T, S] mask letting the last T of S positions see themselves and everything before."""
    return jnp.arange(s)[None, :] <= jnp.arange(t)[:, None] + (s - t)


class MLP(nnx.Module):
    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs) -> None:
        d, i = config.hidden_size, config.intermediate_size
        self.gate_proj = nnx.Linear(d, i, use_bias=False, rngs=rngs)
        self.up_proj = nnx.Linear(d, i, use_bias=False, rngs=rngs)
        self.down_proj = nnx.Linear(i, d, use_bias=False, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs) -> None:
        d, eps = config.hidden_size, config.rms_norm_eps
        self.input_layernorm = nnx.RMSNorm(d, epsilon=eps, rngs=rngs)
        self.self_attn = Attention(config, rngs=rngs)
        self.post_attention_layernorm = nnx.RMSNorm(d, epsilon=eps, rngs=rngs)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, cache: KVCache | None = None
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
        h, k, v = self.self_attn(self.input_layernorm(x), cos, sin, cache)
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x)), k, v


class Llama(nnx.Module):
    """input_ids [B, T] -> logits [B, T, vocab]."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs) -> None:
        d = config.hidden_size
        self.head_dim, self.rope_theta = config.head_dim, config.rope_theta
        self.embed_tokens = nnx.Embed(config.vocab_size, d, rngs=rngs)
        self.layers = nnx.List([DecoderLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.norm = nnx.RMSNorm(d, epsilon=config.rms_norm_eps, rngs=rngs)
        self.lm_head = None if config.tie_word_embeddings else nnx.Linear(d, config.vocab_size, use_bias=False,
                                                                           rngs=rngs)

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        cos, sin = rope_angles(jnp.arange(input_ids.shape[1]), self.head_dim, self.rope_theta)
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x, _, _ = layer(x, cos, sin)
        return self.logits(self.norm(x))

    def step(self, input_ids: jax.Array, past_keys: jax.Array, past_values: jax.Array
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """One step after cached keys/values [L, B, KV, P, head_dim] -> (logits, keys, values) over P + T."""
        past = past_keys.shape[3]
        cos, sin = rope_angles(past + jnp.arange(input_ids.shape[1]), self.head_dim, self.rope_theta)
        x = self.embed_tokens(input_ids)
        keys, values = [], []
        for i, layer in enumerate(self.layers):
            x, k, v = layer(x, cos, sin, (jnp.swapaxes(past_keys[i], 1, 2), jnp.swapaxes(past_values[i], 1, 2)))
            keys.append(jnp.swapaxes(k, 1, 2))
            values.append(jnp.swapaxes(v, 1, 2))
        return self.logits(self.norm(x)), jnp.stack(keys), jnp.stack(values)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """The LM head, or the transposed token embedding when they are tied."""
        return self.embed_tokens.attend(hidden) if self.lm_head is None else self.lm_head(hidden)


class LlamaWithCache(Llama):
    """(input_ids, past_keys, past_values) -> (logits, keys, values): `Llama.step` as the module's call."""

    def __call__(self, input_ids: jax.Array, past_keys: jax.Array, past_values: jax.Array  # type: ignore[override]
                 ) -> tuple[jax.Array, jax.Array, jax.Array]:
        return self.step(input_ids, past_keys, past_values)


def _layer(p: dict[str, Any]) -> dict[str, Any]:
    return {"input_layernorm": convert.norm(p["input_layernorm"]),
            "post_attention_layernorm": convert.norm(p["post_attention_layernorm"]),
            "self_attn": {k: convert.linear(p["self_attn"][k]) for k in ("q_proj", "k_proj", "v_proj", "o_proj")},
            "mlp": {k: convert.linear(p["mlp"][k]) for k in ("gate_proj", "up_proj", "down_proj")}}


def _pure(params: dict[str, Any]) -> dict[str, Any]:
    """The torch-layout tree as a Flax pure dict for `Llama` (and `LlamaWithCache`)."""
    pure = {"embed_tokens": convert.embed(params["embed_tokens"]),
            "layers": {int(i): _layer(p) for i, p in params["layers"].items()}, "norm": convert.norm(params["norm"])}
    if "lm_head" in params:
        pure["lm_head"] = convert.linear(params["lm_head"])
    return pure


def from_params(config: LlamaConfig, params: dict[str, Any]) -> Llama:
    """The Flax Llama holding `params` (a jax tree in the torch model's layout)."""
    return convert.build_nnx(lambda: Llama(config, rngs=nnx.Rngs(0)), _pure(params))


def from_params_with_cache(config: LlamaConfig, params: dict[str, Any]) -> LlamaWithCache:
    """The Flax Llama whose call is one cached step, holding `params`."""
    return convert.build_nnx(lambda: LlamaWithCache(config, rngs=nnx.Rngs(0)), _pure(params))

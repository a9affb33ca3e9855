"""GPT-2 in Flax NNX, reading the torch model's parameter tree; attention via jax.nn.dot_product_attention."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from crossgraph.models import convert
from crossgraph.models.gpt2 import GPT2Config


class Attention(nnx.Module):
    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs) -> None:
        d = config.n_embd
        self.n_head = config.n_head
        self.c_attn = nnx.Linear(d, 3 * d, rngs=rngs)
        self.c_proj = nnx.Linear(d, d, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        q, k, v = jnp.split(self.c_attn(x), 3, axis=-1)
        q, k, v = (z.reshape(b, t, self.n_head, d // self.n_head) for z in (q, k, v))
        y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.reshape(b, t, d))


class MLP(nnx.Module):
    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs) -> None:
        self.c_fc = nnx.Linear(config.n_embd, 4 * config.n_embd, rngs=rngs)
        self.c_proj = nnx.Linear(4 * config.n_embd, config.n_embd, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.c_proj(jax.nn.gelu(self.c_fc(x), approximate=True))


class Block(nnx.Module):
    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs) -> None:
        d, eps = config.n_embd, config.layer_norm_epsilon
        self.ln_1 = nnx.LayerNorm(d, epsilon=eps, rngs=rngs)
        self.attn = Attention(config, rngs=rngs)
        self.ln_2 = nnx.LayerNorm(d, epsilon=eps, rngs=rngs)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT2(nnx.Module):
    """input_ids [B, T] -> logits [B, T, vocab], LM head tied to the token embedding."""

    def __init__(self, config: GPT2Config, *, rngs: nnx.Rngs) -> None:
        self.wte = nnx.Embed(config.vocab_size, config.n_embd, rngs=rngs)
        self.wpe = nnx.Embed(config.n_positions, config.n_embd, rngs=rngs)
        self.h = nnx.List([Block(config, rngs=rngs) for _ in range(config.n_layer)])
        self.ln_f = nnx.LayerNorm(config.n_embd, epsilon=config.layer_norm_epsilon, rngs=rngs)

    def __call__(self, input_ids: jax.Array) -> jax.Array:
        x = self.wte(input_ids) + self.wpe(jnp.arange(input_ids.shape[1]))[None]
        for block in self.h:
            x = block(x)
        return self.wte.attend(self.ln_f(x))


def _block(p: dict[str, Any]) -> dict[str, Any]:
    return {"ln_1": convert.norm(p["ln_1"]), "ln_2": convert.norm(p["ln_2"]),
            "attn": {k: convert.linear(p["attn"][k]) for k in ("c_attn", "c_proj")},
            "mlp": {k: convert.linear(p["mlp"][k]) for k in ("c_fc", "c_proj")}}


def from_params(config: GPT2Config, params: dict[str, Any]) -> GPT2:
    """The Flax GPT-2 holding `params` (a jax tree in the torch model's layout)."""
    pure = {"wte": convert.embed(params["wte"]), "wpe": convert.embed(params["wpe"]),
            "h": {int(i): _block(p) for i, p in params["h"].items()}, "ln_f": convert.norm(params["ln_f"])}
    return convert.build_nnx(lambda: GPT2(config, rngs=nnx.Rngs(0)), pure)

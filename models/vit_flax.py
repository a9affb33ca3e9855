"""ViT in Flax NNX, reading the torch model's parameter tree; attention via jax.nn.dot_product_attention.

The module takes NCHW images, as the torch model does, and transposes them to NHWC once, for the patch nnx.Conv.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from crossgraph.models import convert
from crossgraph.models.vit import ViTConfig


class Embeddings(nnx.Module):
    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs) -> None:
        d, p = config.hidden_size, config.patch_size
        self.projection = nnx.Conv(config.num_channels, d, (p, p), strides=(p, p), padding="VALID", rngs=rngs)
        self.cls_token = nnx.Param(jnp.zeros((1, 1, d)))
        self.position_embeddings = nnx.Param(jnp.zeros((1, config.num_patches + 1, d)))

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        x = self.projection(jnp.transpose(pixel_values, (0, 2, 3, 1)))  # NCHW -> NHWC, the one layout change
        b, _, _, d = x.shape
        x = x.reshape(b, -1, d)  # patches in row-major (h, w) order, as torch's flatten(2) gives them
        cls = jnp.broadcast_to(self.cls_token[...], (b, 1, d))
        return jnp.concatenate([cls, x], axis=1) + self.position_embeddings[...]


class Attention(nnx.Module):
    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs) -> None:
        d = config.hidden_size
        self.n_head = config.num_attention_heads
        self.query = nnx.Linear(d, d, rngs=rngs)
        self.key = nnx.Linear(d, d, rngs=rngs)
        self.value = nnx.Linear(d, d, rngs=rngs)
        self.output = nnx.Linear(d, d, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, t, d = x.shape
        q, k, v = (f(x).reshape(b, t, self.n_head, d // self.n_head) for f in (self.query, self.key, self.value))
        return self.output(jax.nn.dot_product_attention(q, k, v).reshape(b, t, d))


class Layer(nnx.Module):
    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs) -> None:
        d, eps = config.hidden_size, config.layer_norm_eps
        self.layernorm_before = nnx.LayerNorm(d, epsilon=eps, rngs=rngs)
        self.attention = Attention(config, rngs=rngs)
        self.layernorm_after = nnx.LayerNorm(d, epsilon=eps, rngs=rngs)
        self.intermediate = nnx.Linear(d, config.intermediate_size, rngs=rngs)
        self.output = nnx.Linear(config.intermediate_size, d, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attention(self.layernorm_before(x))
        return x + self.output(jax.nn.gelu(self.intermediate(self.layernorm_after(x)), approximate=False))


class ViT(nnx.Module):
    """pixel_values [B, C, image_size, image_size] (NCHW, like the torch model) -> logits [B, num_classes]."""

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs) -> None:
        self.embeddings = Embeddings(config, rngs=rngs)
        self.layers = nnx.List([Layer(config, rngs=rngs) for _ in range(config.num_hidden_layers)])
        self.layernorm = nnx.LayerNorm(config.hidden_size, epsilon=config.layer_norm_eps, rngs=rngs)
        self.classifier = nnx.Linear(config.hidden_size, config.num_classes, rngs=rngs)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        x = self.embeddings(pixel_values)
        for layer in self.layers:
            x = layer(x)
        return self.classifier(self.layernorm(x)[:, 0])


def _layer(p: dict[str, Any]) -> dict[str, Any]:
    attn = p["attention"]
    return {"layernorm_before": convert.norm(p["layernorm_before"]),
            "attention": {**{k: convert.linear(attn["attention"][k]) for k in ("query", "key", "value")},
                          "output": convert.linear(attn["output"]["dense"])},
            "layernorm_after": convert.norm(p["layernorm_after"]),
            "intermediate": convert.linear(p["intermediate"]["dense"]),
            "output": convert.linear(p["output"]["dense"])}


def from_params(config: ViTConfig, params: dict[str, Any]) -> ViT:
    """The Flax ViT holding `params` (a jax tree in the torch model's layout)."""
    emb = params["embeddings"]
    pure = {"embeddings": {"projection": convert.conv(emb["patch_embeddings"]["projection"]),
                           "cls_token": emb["cls_token"], "position_embeddings": emb["position_embeddings"]},
            "layers": {int(i): _layer(p) for i, p in params["encoder"]["layer"].items()},
            "layernorm": convert.norm(params["layernorm"]), "classifier": convert.linear(params["classifier"])}
    return convert.build_nnx(lambda: ViT(config, rngs=nnx.Rngs(0)), pure)

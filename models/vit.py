"""Vision Transformer (ViT) as a functional model: patch embedding, class token, pre-LN encoder, linear head.

Parameter names mirror Hugging Face's ViTModel (`embeddings.patch_embeddings.projection`,
`encoder.layer.0.attention.attention.query`, ...) plus ViTForImageClassification's `classifier`, with torch
layouts: the patch projection is a conv (OIHW), Linear weights are [out, in]. Attention is written out (scores,
softmax) so fusion passes have the real pattern to find; GELU is the exact (erf) one, as in ViT.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import torch
import torch.nn.functional as F

from crossgraph.graphs import FunctionalModel


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """ViT hyperparameters; the defaults are ViT-B/16 at 224x224 (86M parameters).

    layer_norm_eps is 1e-12, Hugging Face ViTConfig's default (the original JAX ViT uses 1e-6), so that
    Hugging Face checkpoints mapped into this tree reproduce their outputs.
    """

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    num_classes: int = 1000
    layer_norm_eps: float = 1e-12

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                             f"{self.num_attention_heads}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}")

    @classmethod
    def tiny(cls) -> "ViTConfig":
        return cls(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=64, num_classes=10)

    @classmethod
    def b16(cls) -> "ViTConfig":
        return cls()

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


def init(config: ViTConfig, seed: int = 0) -> dict:
    """Hugging Face ViT's initialization, untruncated: N(0, 0.02) weights and embeddings, zero biases."""
    g = torch.Generator().manual_seed(seed)
    d, p = config.hidden_size, config.patch_size

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.02

    def linear(n_out: int, n_in: int) -> dict:
        return {"weight": normal(n_out, n_in), "bias": torch.zeros(n_out)}

    def layer_norm() -> dict:
        return {"weight": torch.ones(d), "bias": torch.zeros(d)}

    def layer() -> dict:
        return {"layernorm_before": layer_norm(),
                "attention": {"attention": {k: linear(d, d) for k in ("query", "key", "value")},
                              "output": {"dense": linear(d, d)}},
                "layernorm_after": layer_norm(),
                "intermediate": {"dense": linear(config.intermediate_size, d)},
                "output": {"dense": linear(d, config.intermediate_size)}}

    embeddings = {"cls_token": normal(1, 1, d), "position_embeddings": normal(1, config.num_patches + 1, d),
                  "patch_embeddings": {"projection": {"weight": normal(d, config.num_channels, p, p),
                                                      "bias": torch.zeros(d)}}}
    return {"embeddings": embeddings,
            "encoder": {"layer": {str(i): layer() for i in range(config.num_hidden_layers)}},
            "layernorm": layer_norm(), "classifier": linear(config.num_classes, d)}


def linear(p: dict, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, p["weight"], p["bias"])


def layer_norm(p: dict, x: torch.Tensor, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], p["weight"], p["bias"], eps)


def embed(p: dict, pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """pixel_values [B, C, H, W] -> [class token, patches in row-major order] + positions: [B, 1 + N, D]."""
    proj = p["patch_embeddings"]["projection"]
    x = F.conv2d(pixel_values, proj["weight"], proj["bias"], stride=patch_size).flatten(2).transpose(1, 2)
    cls = p["cls_token"].expand(x.shape[0], -1, -1)
    return torch.cat([cls, x], dim=1) + p["position_embeddings"]


def attention(p: dict, x: torch.Tensor, n_head: int) -> torch.Tensor:
    """Bidirectional multi-head self-attention over x [B, T, D], followed by the output projection."""
    b, t, d = x.shape
    q, k, v = (linear(p["attention"][name], x).view(b, t, n_head, d // n_head).transpose(1, 2)
               for name in ("query", "key", "value"))
    scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(d // n_head))
    y = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, t, d)
    return linear(p["output"]["dense"], y)


def layer(p: dict, x: torch.Tensor, config: ViTConfig) -> torch.Tensor:
    """One pre-LN encoder layer: attention and an exact-GELU MLP, each around a residual."""
    eps = config.layer_norm_eps
    x = x + attention(p["attention"], layer_norm(p["layernorm_before"], x, eps), config.num_attention_heads)
    h = F.gelu(linear(p["intermediate"]["dense"], layer_norm(p["layernorm_after"], x, eps)))
    return x + linear(p["output"]["dense"], h)


def hidden_states(params: dict, pixel_values: torch.Tensor, *, config: ViTConfig) -> torch.Tensor:
    """pixel_values [B, C, H, W] -> final hidden states [B, 1 + N, D] (after the last layernorm)."""
    x = embed(params["embeddings"], pixel_values, config.patch_size)
    layers = params["encoder"]["layer"]
    for i in range(len(layers)):
        x = layer(layers[str(i)], x, config)
    return layer_norm(params["layernorm"], x, config.layer_norm_eps)


def apply(params: dict, pixel_values: torch.Tensor, *, config: ViTConfig) -> torch.Tensor:
    """pixel_values [B, C, image_size, image_size] (float32, NCHW) -> logits [B, num_classes] from the class token."""
    return linear(params["classifier"], hidden_states(params, pixel_values, config=config)[:, 0])


def model(config: ViTConfig, seed: int = 0) -> FunctionalModel:
    """ViT with fresh parameters, bound to its config and its Flax reference."""
    return FunctionalModel(name="vit", apply=functools.partial(apply, config=config), params=init(config, seed),
                           config=config, flax_reference="crossgraph.models.vit_flax:from_params")


def example_inputs(config: ViTConfig, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor]:
    """Standard-normal NCHW images at config.image_size."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, config.num_channels, config.image_size, config.image_size, generator=g),)


def dynamic_shapes(config: ViTConfig) -> tuple[dict[int, torch.export.Dim]]:
    """Symbolic batch for `pixel_values`; the image size is fixed, since the position embeddings are."""
    return ({0: torch.export.Dim("batch", min=1, max=1024)},)


def tiny() -> tuple[FunctionalModel, tuple[torch.Tensor]]:
    """SPEC factory: `crossgraph check crossgraph.models.vit:tiny`."""
    config = ViTConfig.tiny()
    return model(config), example_inputs(config, batch=1)


def b16() -> tuple[FunctionalModel, tuple[torch.Tensor]]:
    """SPEC factory: ViT-B/16 (86M) on one 224x224 image."""
    config = ViTConfig.b16()
    return model(config), example_inputs(config, batch=1)

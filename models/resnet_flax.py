"""ResNet in Flax NNX, reading the torch model's parameter tree (conv kernels OIHW -> HWIO via `convert.conv`).

The module takes NCHW images, as the torch model does, and transposes them to NHWC once at the entry: nnx.Conv
and nnx.BatchNorm work channels-last. Padding is spelled out to match torch's symmetric padding (Flax's "SAME"
pads strided convs asymmetrically).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from crossgraph.models import convert
from crossgraph.models.resnet import BN_EPS, ResNetConfig, stage_stride


def _conv(c_in: int, c_out: int, k: int, stride: int, pad: int, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(c_in, c_out, (k, k), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                    use_bias=False, rngs=rngs)


def _bn(c: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(c, use_running_average=True, epsilon=BN_EPS, rngs=rngs)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """torch's max_pool2d(3, stride 2, padding 1) on NHWC: the padding is -inf, so it never wins the max."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                 ((0, 0), (1, 1), (1, 1), (0, 0)))


class BasicBlock(nnx.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, *, rngs: nnx.Rngs) -> None:
        self.conv1 = _conv(c_in, c_out, 3, stride, 1, rngs)
        self.bn1 = _bn(c_out, rngs)
        self.conv2 = _conv(c_out, c_out, 3, 1, 1, rngs)
        self.bn2 = _bn(c_out, rngs)
        projects = stride != 1 or c_in != c_out  # the shortcut changes shape: a strided 1x1 conv and BN
        self.downsample = nnx.List([_conv(c_in, c_out, 1, stride, 0, rngs), _bn(c_out, rngs)]) if projects else None

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        if self.downsample is not None:
            conv, bn = self.downsample
            x = bn(conv(x))
        return jax.nn.relu(h + x)


class ResNet(nnx.Module):
    """images [B, C, H, W] (NCHW, like the torch model) -> logits [B, num_classes]."""

    def __init__(self, config: ResNetConfig, *, rngs: nnx.Rngs) -> None:
        self.conv1 = _conv(config.in_channels, config.widths[0], 7, 2, 3, rngs)
        self.bn1 = _bn(config.widths[0], rngs)
        stages, c_in = [], config.widths[0]
        for stage, (n_blocks, c_out) in enumerate(zip(config.layers, config.widths)):
            stages.append(nnx.List([BasicBlock(c_in if i == 0 else c_out, c_out,
                                               stage_stride(stage) if i == 0 else 1, rngs=rngs)
                                    for i in range(n_blocks)]))
            c_in = c_out
        self.stages = nnx.List(stages)
        self.fc = nnx.Linear(config.widths[-1], config.num_classes, rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        x = jnp.transpose(images, (0, 2, 3, 1))  # NCHW -> NHWC, the one layout change
        x = max_pool_3x3_s2(jax.nn.relu(self.bn1(self.conv1(x))))
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return self.fc(x.mean(axis=(1, 2)))


def _batch_norm(p: dict[str, Any]) -> dict[str, Any]:
    """torch BatchNorm2d {weight, bias, running_mean, running_var} -> nnx.BatchNorm {scale, bias, mean, var}."""
    return {**convert.norm(p), "mean": p["running_mean"], "var": p["running_var"]}


def _block(p: dict[str, Any]) -> dict[str, Any]:
    out = {"conv1": convert.conv(p["conv1"]), "bn1": _batch_norm(p["bn1"]),
           "conv2": convert.conv(p["conv2"]), "bn2": _batch_norm(p["bn2"])}
    if "downsample" in p:
        out["downsample"] = {0: convert.conv(p["downsample"]["0"]), 1: _batch_norm(p["downsample"]["1"])}
    return out


def from_params(config: ResNetConfig, params: dict[str, Any]) -> ResNet:
    """The Flax ResNet holding `params` (a jax tree in the torch model's layout); `layer<n>` is stages[n-1]."""
    stages = {s: {int(i): _block(p) for i, p in params[f"layer{s + 1}"].items()} for s in range(len(config.layers))}
    pure = {"conv1": convert.conv(params["conv1"]), "bn1": _batch_norm(params["bn1"]), "stages": stages,
            "fc": convert.linear(params["fc"])}
    return convert.build_nnx(lambda: ResNet(config, rngs=nnx.Rngs(0)), pure)

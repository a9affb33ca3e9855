"""ResNet (BasicBlock) as a functional model: the torchvision architecture over one parameter tree.

Parameter names mirror torchvision's (`conv1.weight`, `layer2.0.downsample.0.weight`, `fc.bias`) with torch
layouts: conv weights OIHW, Linear [out, in]. Batch norm is inference-only: it normalizes with the running
statistics (eps 1e-5) and never updates them, so `apply` stays a pure function.
"""

from __future__ import annotations

import dataclasses
import functools

import torch
import torch.nn.functional as F

from crossgraph.graphs import FunctionalModel

BN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """ResNet hyperparameters; the defaults are ResNet-18 (11.7M parameters)."""

    layers: tuple[int, ...] = (2, 2, 2, 2)
    """BasicBlocks per stage (torchvision's `layers`)."""
    widths: tuple[int, ...] = (64, 128, 256, 512)
    """Channels per stage; the stem produces widths[0]."""
    num_classes: int = 1000
    in_channels: int = 3
    image_size: int = 224
    """Height and width of the example images."""

    def __post_init__(self) -> None:
        if not self.layers or len(self.layers) != len(self.widths):
            raise ValueError(f"layers {self.layers} and widths {self.widths} must be non-empty and the same length")
        if min(self.layers) < 1 or min(self.widths) < 1:
            raise ValueError("every stage needs at least one block and one channel")

    @classmethod
    def tiny(cls) -> "ResNetConfig":
        return cls(layers=(1, 1), widths=(8, 16), num_classes=10, image_size=32)

    @classmethod
    def resnet18(cls) -> "ResNetConfig":
        return cls()

    @property
    def stride(self) -> int:
        """Total downsampling: stem conv and max pool (4), then 2 per stage after the first."""
        return 2 ** (len(self.layers) + 1)


def stage_stride(stage: int) -> int:
    """The first block of every stage but the first halves the resolution."""
    return 1 if stage == 0 else 2


def init(config: ResNetConfig, seed: int = 0) -> dict:
    """torchvision's initialization (Kaiming fan-out convs, default Linear) with random running statistics.

    Fresh torchvision models have running mean 0 and variance 1, which would hide a swapped mapping; here they are
    drawn like trained ones: mean ~ N(0, 0.1), variance ~ U(0.5, 1.5).
    """
    g = torch.Generator().manual_seed(seed)

    def conv(c_out: int, c_in: int, k: int) -> dict:
        return {"weight": torch.randn(c_out, c_in, k, k, generator=g) * (2.0 / (c_out * k * k)) ** 0.5}

    def batch_norm(c: int) -> dict:
        return {"weight": torch.ones(c), "bias": torch.zeros(c),
                "running_mean": torch.randn(c, generator=g) * 0.1,
                "running_var": torch.rand(c, generator=g) + 0.5}

    def block(c_in: int, c_out: int, stride: int) -> dict:
        p = {"conv1": conv(c_out, c_in, 3), "bn1": batch_norm(c_out),
             "conv2": conv(c_out, c_out, 3), "bn2": batch_norm(c_out)}
        if stride != 1 or c_in != c_out:
            p["downsample"] = {"0": conv(c_out, c_in, 1), "1": batch_norm(c_out)}
        return p

    params = {"conv1": conv(config.widths[0], config.in_channels, 7), "bn1": batch_norm(config.widths[0])}
    c_in = config.widths[0]
    for stage, (n_blocks, c_out) in enumerate(zip(config.layers, config.widths)):
        params[f"layer{stage + 1}"] = {str(i): block(c_in if i == 0 else c_out, c_out,
                                                     stage_stride(stage) if i == 0 else 1)
                                       for i in range(n_blocks)}
        c_in = c_out
    bound = config.widths[-1] ** -0.5
    params["fc"] = {"weight": (torch.rand(config.num_classes, config.widths[-1], generator=g) * 2 - 1) * bound,
                    "bias": (torch.rand(config.num_classes, generator=g) * 2 - 1) * bound}
    return params


def batch_norm(p: dict, x: torch.Tensor) -> torch.Tensor:
    """Inference batch norm over channels of x [B, C, H, W], with the running statistics."""
    return F.batch_norm(x, p["running_mean"], p["running_var"], p["weight"], p["bias"], training=False, eps=BN_EPS)


def basic_block(p: dict, x: torch.Tensor, stride: int) -> torch.Tensor:
    """Two 3x3 conv-BN layers plus the shortcut (a strided 1x1 conv-BN where the shape changes)."""
    h = F.relu(batch_norm(p["bn1"], F.conv2d(x, p["conv1"]["weight"], stride=stride, padding=1)))
    h = batch_norm(p["bn2"], F.conv2d(h, p["conv2"]["weight"], padding=1))
    if "downsample" in p:
        x = batch_norm(p["downsample"]["1"], F.conv2d(x, p["downsample"]["0"]["weight"], stride=stride))
    return F.relu(h + x)


def features(params: dict, images: torch.Tensor, *, config: ResNetConfig) -> torch.Tensor:
    """images [B, C, H, W] -> pooled features [B, widths[-1]]."""
    x = F.relu(batch_norm(params["bn1"], F.conv2d(images, params["conv1"]["weight"], stride=2, padding=3)))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    for stage in range(len(config.layers)):
        blocks = params[f"layer{stage + 1}"]
        for i in range(len(blocks)):
            x = basic_block(blocks[str(i)], x, stage_stride(stage) if i == 0 else 1)
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


def apply(params: dict, images: torch.Tensor, *, config: ResNetConfig) -> torch.Tensor:
    """images [B, C, H, W] (float32, NCHW) -> logits [B, num_classes]."""
    return F.linear(features(params, images, config=config), params["fc"]["weight"], params["fc"]["bias"])


def model(config: ResNetConfig, seed: int = 0) -> FunctionalModel:
    """ResNet with fresh parameters, bound to its config and its Flax reference."""
    return FunctionalModel(name="resnet", apply=functools.partial(apply, config=config), params=init(config, seed),
                           config=config, flax_reference="crossgraph.models.resnet_flax:from_params")


def example_inputs(config: ResNetConfig, batch: int = 2, seed: int = 0, height: int | None = None,
                   width: int | None = None) -> tuple[torch.Tensor]:
    """Standard-normal NCHW images, config.image_size square unless height/width say otherwise."""
    h, w = height or config.image_size, width or config.image_size
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, config.in_channels, h, w, generator=g),)


def dynamic_shapes(config: ResNetConfig) -> tuple[dict[int, torch.export.Dim]]:
    """Symbolic batch, height and width for `images`; height and width are multiples of `config.stride`.

    Multiples of the total stride keep every strided layer's output exact, so no size is rounded. They start at
    2 * stride: torch.export treats size 1 as a special case, so the last feature map must be at least 2x2.
    """
    s = config.stride
    return ({0: torch.export.Dim("batch", min=1, max=1024),
             2: s * torch.export.Dim("height_blocks", min=2, max=2048 // s),
             3: s * torch.export.Dim("width_blocks", min=2, max=2048 // s)},)


def tiny() -> tuple[FunctionalModel, tuple[torch.Tensor]]:
    """SPEC factory: `crossgraph check crossgraph.models.resnet:tiny`."""
    config = ResNetConfig.tiny()
    return model(config), example_inputs(config, batch=1)


def resnet18() -> tuple[FunctionalModel, tuple[torch.Tensor]]:
    """SPEC factory: ResNet-18 (11.7M) on one 224x224 image."""
    config = ResNetConfig.resnet18()
    return model(config), example_inputs(config, batch=1)

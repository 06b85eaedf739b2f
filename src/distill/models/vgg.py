"""CIFAR-style VGG with BatchNorm: five conv blocks, max-pool between them, adaptive average pooling.

Module paths: ``block{0..4}.{conv,bn,relu}{i}``, ``pool{0..3}``, ``avgpool``, ``fc``. Pools use
ceil_mode and the final pool is adaptive, so 8x8, 28x28 and 32x32 inputs (and 1-D sequences) all work.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn

from distill.models.base import MODELS, Builder, SpatialOps, init_weights, spatial_ops

# Output channels of each conv, block by block (VGG-A/B/D/E depths, minus VGG's three FC layers).
CONFIGS: dict[str, tuple[tuple[int, ...], ...]] = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def vgg_block(ops: SpatialOps, c_in: int, widths: Sequence[int]) -> nn.Sequential:
    """conv3 -> BN -> ReLU per width, named ``conv{i}``, ``bn{i}``, ``relu{i}``."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for i, c_out in enumerate(widths):
        layers[f"conv{i}"] = ops.conv(c_in, c_out, kernel_size=3, padding=1, bias=False)
        layers[f"bn{i}"] = ops.bn(c_out)
        layers[f"relu{i}"] = nn.ReLU()  # not in-place, so taps on ``bn{i}`` stay pre-activation
        c_in = c_out
    return nn.Sequential(layers)


class VGG(nn.Module):
    """``block0`` -> ``pool0`` -> ... -> ``block4`` -> ``avgpool`` -> ``fc``."""

    def __init__(self, ops: SpatialOps, in_channels: int, num_classes: int,
                 config: Sequence[Sequence[int]]) -> None:
        super().__init__()
        c_in = in_channels
        for i, widths in enumerate(config):
            self.add_module(f"block{i}", vgg_block(ops, c_in, widths))
            if i < len(config) - 1:
                self.add_module(f"pool{i}", ops.maxpool(2, ceil_mode=True))
            c_in = widths[-1]
        self.depth = len(config)
        self.avgpool = ops.avgpool(1)
        self.fc = nn.Linear(c_in, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) or (B, C, L) -> logits (B, num_classes)."""
        for i in range(self.depth):
            x = getattr(self, f"block{i}")(x)
            if i < self.depth - 1:
                x = getattr(self, f"pool{i}")(x)  # spatial size halves (rounded up)
        return self.fc(self.avgpool(x).flatten(1))  # (B, 512) -> (B, num_classes)


def _builder(name: str) -> Builder:
    def build(*, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
        return VGG(spatial_ops(name, input_shape), input_shape[0], num_classes, CONFIGS[name])

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"CIFAR-style {name.upper()} with BatchNorm."
    return build


for _name in CONFIGS:
    MODELS.register(_name)(_builder(_name))

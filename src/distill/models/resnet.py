"""CIFAR-style ResNets (He et al. 2016, section 4.2): a 3x3 stem and three stages of BasicBlocks.

``resnet{depth}`` uses stem/stage widths 16/16/32/64; ``resnet{depth}x4`` uses 32/64/128/256, the
wide variants common in distillation benchmarks. Depth is 6n+2 with n blocks per stage. Module paths:
``conv1``, ``bn1``, ``layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2,shortcut,relu}``, ``avgpool``, ``fc``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from distill.models.base import MODELS, Builder, SpatialOps, init_weights, spatial_ops

DEPTHS = (8, 14, 20, 32, 44, 56, 110)
WIDTHS = {"": (16, 16, 32, 64), "x4": (32, 64, 128, 256)}


class BasicBlock(nn.Module):
    """Two 3x3 convs with BN; a 1x1 conv+BN ``shortcut`` only where the shape changes."""

    def __init__(self, ops: SpatialOps, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = ops.conv(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = ops.bn(c_out)
        self.conv2 = ops.conv(c_out, c_out, kernel_size=3, padding=1, bias=False)
        self.bn2 = ops.bn(c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                ops.conv(c_in, c_out, kernel_size=1, stride=stride, bias=False), ops.bn(c_out)
            )
        self.relu = nn.ReLU()  # a module, so that ``relu:input`` taps the pre-activation sum (OFD, ReviewKD)

    def forward(self, x: Tensor) -> Tensor:
        """(B, c_in, *S) -> (B, c_out, *S / stride)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        # Out-of-place add and ReLU: a tap on ``bn2`` keeps the pre-residual value.
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """Stem -> ``layer1`` (stride 1) -> ``layer2``, ``layer3`` (stride 2) -> ``avgpool`` -> ``fc``."""

    def __init__(self, ops: SpatialOps, in_channels: int, num_classes: int, depth: int,
                 widths: Sequence[int]) -> None:
        super().__init__()
        if (depth - 2) % 6 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 >= 8, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = ops.conv(in_channels, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = ops.bn(widths[0])
        self.layer1 = self._stage(ops, widths[0], widths[1], n, stride=1)
        self.layer2 = self._stage(ops, widths[1], widths[2], n, stride=2)
        self.layer3 = self._stage(ops, widths[2], widths[3], n, stride=2)
        self.avgpool = ops.avgpool(1)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    @staticmethod
    def _stage(ops: SpatialOps, c_in: int, c_out: int, n: int, stride: int) -> nn.Sequential:
        blocks = [BasicBlock(ops, c_in, c_out, stride)]
        blocks += [BasicBlock(ops, c_out, c_out, 1) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) or (B, C, L) -> logits (B, num_classes)."""
        x = F.relu(self.bn1(self.conv1(x)))  # (B, w0, *S)
        x = self.layer3(self.layer2(self.layer1(x)))  # (B, w3, *S/4)
        return self.fc(self.avgpool(x).flatten(1))


def _builder(name: str, depth: int, widths: Sequence[int]) -> Builder:
    def build(*, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
        ops = spatial_ops(name, input_shape)
        return CifarResNet(ops, input_shape[0], num_classes, depth, widths)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"CIFAR ResNet, depth {depth}, widths {'/'.join(map(str, widths))}."
    return build


# Registered in a loop: every (depth, width) pair is the same class with different numbers.
for _depth in DEPTHS:
    for _suffix, _widths in WIDTHS.items():
        _name = f"resnet{_depth}{_suffix}"
        MODELS.register(_name)(_builder(_name, _depth, _widths))

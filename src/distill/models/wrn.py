"""Wide ResNets (Zagoruyko & Komodakis 2016): pre-activation blocks, stage widths 16k/32k/64k.

Depth is 6n+4 with n blocks per stage. Module paths: ``conv1``, ``block{1,2,3}.{i}.{bn1,conv1,bn2,
conv2,shortcut}``, the final ``bn``, ``avgpool``, ``fc``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import DistillError
from distill.models.base import (
    MODELS,
    Builder,
    SpatialOps,
    check_dropout,
    check_int,
    init_weights,
    spatial_ops,
)

ALIASES = ((16, 1), (16, 2), (40, 1), (40, 2))


class WideBlock(nn.Module):
    """BN-ReLU-conv3 twice (dropout between); a 1x1 ``shortcut`` conv where the shape changes."""

    def __init__(self, ops: SpatialOps, c_in: int, c_out: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = ops.bn(c_in)
        self.conv1 = ops.conv(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = ops.bn(c_out)
        self.conv2 = ops.conv(c_out, c_out, kernel_size=3, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = ops.conv(c_in, c_out, kernel_size=1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """(B, c_in, *S) -> (B, c_out, *S / stride)."""
        pre = F.relu(self.bn1(x))
        out = F.relu(self.bn2(self.conv1(pre)))
        out = self.conv2(F.dropout(out, self.dropout, self.training))
        # As in the paper, a projection shortcut sees the pre-activated input.
        identity = x if self.shortcut is None else self.shortcut(pre)
        return out + identity


class WideResNet(nn.Module):
    """``conv1`` -> ``block1..3`` -> ``bn`` + ReLU -> adaptive ``avgpool`` -> ``fc``."""

    def __init__(self, ops: SpatialOps, in_channels: int, num_classes: int, depth: int, width: int,
                 dropout: float) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = (16, 16 * width, 32 * width, 64 * width)
        self.conv1 = ops.conv(in_channels, widths[0], kernel_size=3, padding=1, bias=False)
        self.block1 = self._stage(ops, widths[0], widths[1], n, 1, dropout)
        self.block2 = self._stage(ops, widths[1], widths[2], n, 2, dropout)
        self.block3 = self._stage(ops, widths[2], widths[3], n, 2, dropout)
        self.bn = ops.bn(widths[3])
        self.avgpool = ops.avgpool(1)
        self.fc = nn.Linear(widths[3], num_classes)
        init_weights(self)

    @staticmethod
    def _stage(ops: SpatialOps, c_in: int, c_out: int, n: int, stride: int, dropout: float) -> nn.Sequential:
        blocks = [WideBlock(ops, c_in, c_out, stride, dropout)]
        blocks += [WideBlock(ops, c_out, c_out, 1, dropout) for _ in range(n - 1)]
        return nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) or (B, C, L) -> logits (B, num_classes)."""
        x = self.block3(self.block2(self.block1(self.conv1(x))))  # (B, 64k, *S/4)
        x = F.relu(self.bn(x))
        return self.fc(self.avgpool(x).flatten(1))


@MODELS.register("wrn")
def wrn(*, num_classes: int, input_shape: tuple[int, ...], depth: int = 16, width: int = 2,
        dropout: float = 0.0) -> nn.Module:
    """Wide ResNet WRN-``depth``-``width``; ``depth`` must be 6n+4 (10, 16, 22, 28, 40, ...)."""
    depth = check_int("wrn", "depth", depth, minimum=10)
    if (depth - 4) % 6:
        raise DistillError(f"model 'wrn': option 'depth' must be 6n+4 (e.g. 16, 28, 40), got {depth}")
    ops = spatial_ops("wrn", input_shape)
    width = check_int("wrn", "width", width)
    return WideResNet(ops, input_shape[0], num_classes, depth, width, check_dropout("wrn", dropout))


def _alias(depth: int, width: int) -> Builder:
    def build(*, num_classes: int, input_shape: tuple[int, ...], dropout: float = 0.0) -> nn.Module:
        return wrn(num_classes=num_classes, input_shape=input_shape, depth=depth, width=width,
                   dropout=dropout)

    build.__name__ = build.__qualname__ = f"wrn_{depth}_{width}"
    build.__doc__ = f"WRN-{depth}-{width}: ``wrn`` with depth={depth}, width={width}."
    return build


for _depth, _width in ALIASES:
    MODELS.register(f"wrn_{_depth}_{_width}")(_alias(_depth, _width))

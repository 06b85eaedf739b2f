"""LeNet-5 (LeCun et al. 1998) with ReLU and max-pooling, as the data-free distillation papers use it (DAFL's
teacher is ``lenet5``, its student ``lenet5`` with ``width: 0.5``, "LeNet-5-half"). For 1-D ``(C, L)`` and 2-D
``(C, H, W)`` inputs of any size: C1 pads by 2 (a 28x28 image becomes LeNet's 32x32), C3 drops its padding only
when the map is at least 5 wide, and C5 spans the whole remaining map (5x5 on 28x28 and 32x32 inputs, as in the
paper)."""

from __future__ import annotations

import math

from torch import Tensor, nn

from distill.errors import DistillError
from distill.models.base import MODELS, spatial_ops

WIDTHS = (6, 16, 120, 84)  # C1, C3, C5 channels and F6 units of LeNet-5


class LeNet5(nn.Module):
    """``features`` (C1, S2, C3, S4, C5 with ReLU) -> ``f6`` Linear+ReLU -> ``fc``."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: float) -> None:
        super().__init__()
        ops = spatial_ops("lenet5", input_shape)
        c1, c3, c5, f6 = (max(1, round(w * width)) for w in WIDTHS)
        sizes = [math.ceil(s / 2) for s in input_shape[1:]]  # after C1 (padded) and S2
        pad = 0 if min(sizes) >= 5 else 2
        sizes = [math.ceil((s - 4 + 2 * pad) / 2) for s in sizes]  # after C3 and S4
        self.features = nn.Sequential(
            ops.conv(input_shape[0], c1, 5, padding=2), nn.ReLU(), ops.maxpool(2, ceil_mode=True),
            ops.conv(c1, c3, 5, padding=pad), nn.ReLU(), ops.maxpool(2, ceil_mode=True),
            ops.conv(c3, c5, tuple(sizes) if len(sizes) > 1 else sizes[0]), nn.ReLU())
        self.f6 = nn.Linear(c5, f6)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(f6, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, L) or (B, C, H, W) -> logits (B, num_classes)."""
        return self.fc(self.relu(self.f6(self.features(x).flatten(1))))  # C5 leaves (B, c5, 1[, 1])


@MODELS.register("lenet5")
def lenet5(*, num_classes: int, input_shape: tuple[int, ...], width: float = 1.0) -> nn.Module:
    """LeNet-5; ``width`` scales every layer (0.5: DAFL's LeNet-5-half student)."""
    if isinstance(width, bool) or not isinstance(width, (int, float)) or width <= 0:
        raise DistillError(f"model 'lenet5': option 'width' must be a positive number, got {width!r}")
    return LeNet5(tuple(input_shape), num_classes, float(width))

"""A small conv net for 1-D ``(C, L)`` sequences and 2-D ``(C, H, W)`` images."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from distill.models.base import MODELS, SpatialOps, check_int, init_weights, positive_ints, spatial_ops


def conv_stage(ops: SpatialOps, c_in: int, c_out: int) -> nn.Sequential:
    """conv3 -> BN -> ReLU -> max-pool by 2, with readable names (``conv``, ``bn``, ``relu``, ``pool``)."""
    return nn.Sequential(OrderedDict(
        conv=ops.conv(c_in, c_out, kernel_size=3, padding=1, bias=False),
        bn=ops.bn(c_out),
        relu=nn.ReLU(),  # not in-place: a tap on ``bn`` must not see its output overwritten
        # ceil_mode lets a size-1 map pass through unchanged, so any input size >= 1 works.
        pool=ops.maxpool(2, ceil_mode=True),
    ))


class SmallCNN(nn.Module):
    """``features.{i}`` conv stages -> global average pool -> optional ``head`` Linear+ReLU -> ``fc``."""

    def __init__(self, ops: SpatialOps, in_channels: int, num_classes: int, channels: list[int],
                 hidden: int) -> None:
        super().__init__()
        widths = [in_channels, *channels]
        pairs = zip(widths[:-1], widths[1:], strict=True)
        self.features = nn.Sequential(*(conv_stage(ops, a, b) for a, b in pairs))
        self.pool = ops.avgpool(1)
        self.head = nn.Linear(widths[-1], hidden) if hidden else None
        self.fc = nn.Linear(hidden or widths[-1], num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, L) or (B, C, H, W) -> logits (B, num_classes)."""
        x = self.pool(self.features(x)).flatten(1)  # (B, channels[-1])
        if self.head is not None:
            x = F.relu(self.head(x))  # (B, hidden)
        return self.fc(x)


@MODELS.register("cnn")
def cnn(
    *, num_classes: int, input_shape: tuple[int, ...], channels: Sequence[int] = (16, 32), hidden: int = 64
) -> nn.Module:
    """Small CNN; ``channels`` gives one conv stage each, ``hidden`` 0 drops the head."""
    ops = spatial_ops("cnn", input_shape)
    widths = positive_ints("cnn", "channels", channels, allow_empty=False)
    return SmallCNN(ops, input_shape[0], num_classes, widths, check_int("cnn", "hidden", hidden, minimum=0))

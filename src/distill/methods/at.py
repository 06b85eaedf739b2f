"""Zagoruyko & Komodakis 2017, "Paying More Attention to Attention" (ICLR), activation-based attention transfer.

The attention map of a feature is the mean over channels of ``|f|^p`` (p = 2), flattened and L2-normalised;
the loss is the mean squared difference of the student's and teacher's maps, summed over layer pairs and
weighted by ``beta`` = 1000 (the authors' code and RepDistiller). Channel counts may differ (the map
averages them away), so no connector is needed; of two maps of different spatial sizes the larger is average-
pooled to the smaller before the attention maps are taken (RepDistiller's ``at_loss``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.connectors import (
    feature_needs,
    layer_pairs,
    paired_features,
    pool_larger,
    probed_shapes,
    require_spatial,
)
from distill.methods.base import METHODS, Method
from distill.types import Batch, LossOutput, ModelOutput, SetupContext, StepContext


def attention_map(feat: Tensor, p: float = 2.0) -> Tensor:
    """(B, C, *S) -> (B, *S): the mean over channels of |f|^p, in fp32."""
    return feat.float().abs().pow(p).mean(dim=1)


def at_loss(student: Tensor, teacher: Tensor, p: float = 2.0) -> Tensor:
    """(B, Cs, *Ss), (B, Ct, *St) -> scalar: mean over batch and positions of the squared difference of
    the L2-normalised flattened attention maps (the larger feature map pooled to the smaller's size first)."""
    student, teacher = pool_larger(student, teacher)  # (B, Cs, *S), (B, Ct, *S)
    q_s = attention_map(student, p)  # (B, *S)
    q_t = attention_map(teacher, p)  # (B, *S)
    q_s = F.normalize(q_s.flatten(1), dim=1)  # (B, N)
    q_t = F.normalize(q_t.flatten(1), dim=1)  # (B, N)
    return (q_s - q_t).pow(2).mean()


@METHODS.register("at")
class AT(Method):
    """Attention transfer: ``beta * sum_pairs at_loss(student, teacher)``.

    The default, ``auto``, transfers at the end of every stage, as the paper and RepDistiller (``feat[1:-1]``):
    ``layer1..3`` of a CIFAR ResNet, ``block1..3`` of a WRN, the VGG blocks, stages paired by relative depth when
    their counts differ (``distill.stages``). Features must be (B, C, L) or (B, C, H, W).
    """

    auto_layers = "stages"

    def __init__(self, student_layers: list[str] | str = "auto", teacher_layers: list[str] | str = "auto",
                 beta: float = 1000.0, p: float = 2.0) -> None:
        super().__init__()
        self.pairs = layer_pairs("at", student_layers, teacher_layers)
        self.needs = feature_needs(self.pairs)
        self.beta, self.p = beta, p

    def setup(self, ctx: SetupContext) -> None:
        """Nothing to build: check that the taps are spatial maps."""
        require_spatial("at", self.pairs, probed_shapes("at", ctx, self.pairs))

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        feats = paired_features("at", s, t, self.pairs)
        loss = self.beta * torch.stack([at_loss(fs, ft, self.p) for fs, ft in feats]).sum()
        return LossOutput(loss, {"at": loss})

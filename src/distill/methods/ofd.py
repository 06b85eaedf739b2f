"""Heo et al. 2019, "A Comprehensive Overhaul of Feature Distillation" (ICCV).

The student's pre-ReLU feature, through a 1x1 conv + BN connector, regresses the teacher's pre-ReLU
feature with the paper's partial L2: the teacher is clamped below by a per-channel margin ``m_c < 0``,
``t' = max(t, m)``, and an element counts only where the student is above it or the teacher is positive,

    loss = sum_{c,n} (s - t')^2 * [(s > t') or (t' > 0)]   / B,

so negative responses need only stay below the margin (the ReLU erases them anyway). Layer pairs are
weighted 2^-(n-1-k) (the deepest 1) and the total by ``beta`` = 1e-3, mdistiller's default feature weight
(its ``OFD.LOSS.FEAT_WEIGHT``), applied to the same batch-averaged sum.

Margin: the paper reads ``m_c = E[t_c | t_c < 0]`` off the teacher's BatchNorm (a Gaussian with the BN's
gamma and beta). External teachers need not have a BN before the tapped ReLU, so here ``m_c`` is the mean
of the negative entries of channel c in the current batch's teacher feature (0 for a channel with none).

The default taps, ``auto``, are every stage's pre-ReLU output, as mdistiller (``preact_feats[1:]``):
``layer{1,2,3}.{last}.relu:input`` of a CIFAR ResNet, ``block{i}.relu{j}:input`` of a VGG (``distill.stages``). On
post-ReLU taps the margins are 0 and the margin has no effect.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.connectors import build_connector, check_setup, feature_needs, layer_pairs, paired_features, probed_shapes
from distill.methods.base import METHODS, Method
from distill.types import Batch, LossOutput, ModelOutput, SetupContext, StepContext


def batch_margin(teacher: Tensor) -> Tensor:
    """(B, C, *S) -> (C,): per channel, the mean of the negative entries (0 where there are none)."""
    t = teacher.detach().float().transpose(0, 1).flatten(1)  # (C, B * N)
    neg = t.clamp(max=0)  # (C, B * N)
    count = (t < 0).sum(dim=1)  # (C,)
    return neg.sum(dim=1) / count.clamp(min=1)


def ofd_loss(student: Tensor, teacher: Tensor, margin: Tensor) -> Tensor:
    """Partial L2 of the connected student (B, C, *S) against the teacher (B, C, *S) clamped below by the
    per-channel margin (C,) -> scalar summed over elements and averaged over the batch; in fp32."""
    s = student.float()
    m = margin.float().view(1, -1, *([1] * (s.dim() - 2)))  # (1, C, 1, ...)
    t = torch.maximum(teacher.float(), m)  # (B, C, *S)
    mask = (s > t) | (t > 0)
    return ((s - t).pow(2) * mask).sum() / s.shape[0]


@METHODS.register("ofd")
class OFD(Method):
    """Overhaul of feature distillation: ``beta * sum_k 2^-(n-1-k) * ofd_loss(conn(s_k), t_k, margin(t_k))``."""

    auto_layers = "stages_preact"

    def __init__(self, student_layers: list[str] | str = "auto", teacher_layers: list[str] | str = "auto",
                 beta: float = 1e-3) -> None:
        super().__init__()
        self.pairs = layer_pairs("ofd", student_layers, teacher_layers)
        self.needs = feature_needs(self.pairs)
        self.beta = beta
        self.connectors = nn.ModuleList()

    def setup(self, ctx: SetupContext) -> None:
        """A 1x1 conv + BN connector per pair, even where shapes match (as in the paper)."""
        shapes = probed_shapes("ofd", ctx, self.pairs)
        self.connectors = nn.ModuleList(build_connector(s, t, kind="proj") for s, t in shapes)

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        check_setup("ofd", self.connectors, self.pairs)
        feats = paired_features("ofd", s, t, self.pairs)
        n = len(feats)
        loss = self.beta * torch.stack([
            ofd_loss(conn(fs), ft, batch_margin(ft)) / 2 ** (n - 1 - k)
            for k, (conn, (fs, ft)) in enumerate(zip(self.connectors, feats))]).sum()
        return LossOutput(loss, {"ofd": loss})

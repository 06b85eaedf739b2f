"""Romero et al. 2015, "FitNets: Hints for Thin Deep Nets" (ICLR).

A connector (the paper's regressor) maps the student's guided layer onto the teacher's hint layer and the
loss is the mean squared error between the two, weighted by ``beta`` = 100 as in RepDistiller / mdistiller.
The paper trains in two stages: stage 1 fits the student up to the guided layer (and the regressor) to the
hint alone, stage 2 trains the whole student. ``pretrain_epochs`` > 0 asks the engine for stage 1: it
optimises :meth:`FitNet.pretrain_loss` alone for that many epochs before the main stage.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.connectors import (
    build_connector,
    check_pretrain_epochs,
    check_setup,
    feature_needs,
    layer_pairs,
    paired_features,
    probed_shapes,
)
from distill.methods.base import METHODS, Method
from distill.types import Batch, LossOutput, ModelOutput, SetupContext, StepContext


def hint_loss(student: Tensor, teacher: Tensor, distance: str = "mse") -> Tensor:
    """Connected student (B, *F) and teacher (B, *F) features -> scalar, in fp32: the mean squared error, or
    (``distance="cosine"``) the mean over samples of 1 - cos(student_i, teacher_i), each sample's features
    flattened: only their direction is matched (embedding distillation with a cosine loss)."""
    if distance == "cosine":
        cos = F.cosine_similarity(student.float().flatten(1), teacher.float().flatten(1), dim=1)  # (B,)
        return (1 - cos).mean()
    return F.mse_loss(student.float(), teacher.float())


@METHODS.register("fitnet")
class FitNet(Method):
    """FitNets hints: ``beta * sum_pairs MSE(connector(student), teacher)``.

    ``student_layers`` / ``teacher_layers`` are paired by position. The default, ``auto``, hints the middle
    stage of each network (``distill.stages``): ``layer2`` of a three-stage CIFAR ResNet, RepDistiller's
    ``hint_layer: 2``, the paper's middle guided/hint layers. Connectors (1x1 conv + BN, or Linear; RepDistiller's
    ConvReg is a 3x3 conv + BN + ReLU) are built from probed shapes.
    ``distance: cosine`` matches the direction of each sample's features instead of their values.
    """

    auto_layers = "middle"

    def __init__(self, student_layers: list[str] | str = "auto", teacher_layers: list[str] | str = "auto",
                 beta: float = 100.0, pretrain_epochs: int = 0, distance: str = "mse") -> None:
        super().__init__()
        if distance not in ("mse", "cosine"):
            raise ValueError(f"distance must be 'mse' (the paper's) or 'cosine', got {distance!r}")
        self.distance = distance
        self.pairs = layer_pairs("fitnet", student_layers, teacher_layers)
        self.needs = feature_needs(self.pairs)
        self.beta = beta
        self.pretrain_epochs = check_pretrain_epochs("fitnet", pretrain_epochs)
        self.connectors = nn.ModuleList()

    def setup(self, ctx: SetupContext) -> None:
        """Build one connector per pair from the probed shapes."""
        self.connectors = nn.ModuleList(build_connector(s, t) for s, t in probed_shapes("fitnet", ctx, self.pairs))

    def _hint(self, s: ModelOutput, t: ModelOutput | None) -> Tensor:
        check_setup("fitnet", self.connectors, self.pairs)
        feats = paired_features("fitnet", s, t, self.pairs)
        return torch.stack([hint_loss(conn(fs), ft, self.distance)
                            for conn, (fs, ft) in zip(self.connectors, feats)]).sum()

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        loss = self.beta * self._hint(s, t)
        return LossOutput(loss, {"fitnet": loss})

    def pretrain_loss(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        """Stage 1: the hint term alone, unweighted (RepDistiller's init stage optimises it without beta)."""
        hint = self._hint(s, t)
        return LossOutput(hint, {"fitnet_pretrain": hint})

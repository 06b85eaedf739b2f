"""Yim et al. 2017, "A Gift from Knowledge Distillation: Fast Optimization, Network Minimization and Transfer
Learning" (CVPR): the flow of solution procedure (FSP).

The FSP matrix of two layers of one network is their channel Gram matrix over spatial positions,
``G[i, j] = mean_n a[i, n] * b[j, n]`` (B, Ca, Cb); consecutive taps form the pairs (layer k, layer k+1).
The loss is the mean squared difference of the student's and teacher's FSP matrices, summed over pairs
(the paper's equal weights) and weighted by ``beta``. Student features first go through connectors onto
the teacher's shapes, so the matrices match whatever the channel counts. Of two layers of different
spatial size, the larger is average-pooled to the smaller (as RepDistiller).

The paper and RepDistiller use FSP as a first stage only: ``pretrain_epochs`` = 30 (RepDistiller's
``init_epochs``) of :meth:`FSP.pretrain_loss` alone, then the main stage trains on the recipe's other methods
(``ce``, ``kd``) without it; ``main: true`` keeps it in the main objective as well.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.connectors import (
    build_connector,
    check_pretrain_epochs,
    check_setup,
    feature_needs,
    flatten_spatial,
    init_only_check,
    layer_pairs,
    paired_features,
    probed_shapes,
    resize,
)
from distill.errors import DistillError
from distill.methods.base import METHODS, Method
from distill.types import Batch, LossOutput, ModelOutput, SetupContext, StepContext


def _common_positions(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Bring two features of one network to the same positions: (B, Ca, N), (B, Cb, N)."""
    if a.dim() == 2 or b.dim() == 2:  # a vector has one "position": pool the other globally
        return flatten_spatial(a).mean(-1, keepdim=True), flatten_spatial(b).mean(-1, keepdim=True)
    if a.dim() != b.dim():
        raise DistillError(f"fsp: cannot pair a {tuple(a.shape)} feature with a {tuple(b.shape)} one")
    size = [min(x, y) for x, y in zip(a.shape[2:], b.shape[2:])]
    return resize(a, size).flatten(2), resize(b, size).flatten(2)


def fsp_matrix(a: Tensor, b: Tensor) -> Tensor:
    """(B, Ca, *Sa), (B, Cb, *Sb) -> (B, Ca, Cb): sum over common positions of a_i * b_j, divided by N."""
    a, b = _common_positions(a.float(), b.float())  # (B, Ca, N), (B, Cb, N)
    return a @ b.transpose(1, 2) / a.shape[-1]


def fsp_loss(student: list[Tensor], teacher: list[Tensor]) -> Tensor:
    """Lists of k >= 2 features per network (student already connected to the teacher's shapes) -> scalar:
    sum over the k-1 consecutive pairs of the mean squared FSP difference."""
    terms = [(fsp_matrix(student[i], student[i + 1]) - fsp_matrix(teacher[i], teacher[i + 1])).pow(2).mean()
             for i in range(len(student) - 1)]
    return torch.stack(terms).sum()


@METHODS.register("fsp")
class FSP(Method):
    """Flow of solution procedure: ``beta * fsp_loss(connected student taps, teacher taps)``.

    Needs at least two taps per side; consecutive taps form the FSP pairs. The default, ``auto``, takes every
    stage's output (``layer1..3`` of a CIFAR ResNet, ``block1..3`` of a WRN; ``distill.stages``), stages paired by
    relative depth. RepDistiller also pairs the stem with ``layer1`` (three matrices for a CIFAR ResNet, two here).
    """

    auto_layers = "stages"

    def __init__(self, student_layers: list[str] | str = "auto", teacher_layers: list[str] | str = "auto",
                 beta: float = 1.0, pretrain_epochs: int = 30, main: bool = False) -> None:
        super().__init__()
        self.main = init_only_check("fsp", pretrain_epochs, main)
        self.pairs = layer_pairs("fsp", student_layers, teacher_layers, min_pairs=2)
        self.needs = feature_needs(self.pairs)
        self.beta = beta
        self.pretrain_epochs = check_pretrain_epochs("fsp", pretrain_epochs)
        self.connectors = nn.ModuleList()

    def setup(self, ctx: SetupContext) -> None:
        """One connector per tap, mapping the student feature onto the teacher's shape."""
        self.connectors = nn.ModuleList(build_connector(s, t) for s, t in probed_shapes("fsp", ctx, self.pairs))

    def _fsp(self, s: ModelOutput, t: ModelOutput | None) -> Tensor:
        check_setup("fsp", self.connectors, self.pairs)
        feats = paired_features("fsp", s, t, self.pairs)
        return fsp_loss([conn(fs) for conn, (fs, _) in zip(self.connectors, feats)], [ft for _, ft in feats])

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        if not self.main:
            return LossOutput(s.logits.new_zeros(()), {})  # the init stage is over: ce (and kd) alone
        loss = self.beta * self._fsp(s, t)
        return LossOutput(loss, {"fsp": loss})

    def pretrain_loss(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        """Stage 1 of the paper: the FSP loss alone, unweighted."""
        loss = self._fsp(s, t)
        return LossOutput(loss, {"fsp_pretrain": loss})

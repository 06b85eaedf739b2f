"""Heo et al. 2019, "Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons"
(AAAI).

The student learns where each teacher neuron is active (pre-ReLU value > 0), not its value, through the
paper's margin-based squared hinge on the connected student pre-activation ``s`` (margin ``m`` = 1):

    teacher active (t > 0):    (s - m)^2  where s <= m
    teacher inactive (t <= 0): (s + m)^2  where s > -m

summed over neurons and averaged over the batch. Layer pairs are weighted 2^(k-n+1) (the deepest 1, each
shallower one half the next) and the total scaled by ``beta`` = 3e-3, the ``/ 1000 * 3`` of RepDistiller.
As in the paper and RepDistiller, the loss is an initialisation stage only: ``pretrain_epochs`` = 30 (RepDistiller's
``init_epochs``) of :meth:`AB.pretrain_loss` alone, then the main stage trains on the other methods of the recipe
(``ce``, ``kd``) without it; ``main: true`` keeps it in the main objective as well.

The default taps, ``auto``, are every stage's pre-ReLU output (RepDistiller's ``feat[1:-1]`` with
``preact=True``): ``layer{1,2,3}.{last}.relu:input`` of a CIFAR ResNet, ``block{i}.relu{j}:input`` of a VGG
(``distill.stages``). A post-ReLU tap still works: an inactive teacher neuron then reads 0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from distill.connectors import (
    build_connector,
    check_pretrain_epochs,
    check_setup,
    feature_needs,
    init_only_check,
    layer_pairs,
    paired_features,
    probed_shapes,
)
from distill.methods.base import METHODS, Method
from distill.types import Batch, LossOutput, ModelOutput, SetupContext, StepContext


def ab_loss(student: Tensor, teacher: Tensor, margin: float = 1.0) -> Tensor:
    """(B, *F) connected student and teacher pre-activations -> scalar: the activation-boundary hinge,
    summed over neurons and averaged over the batch, in fp32."""
    s, active = student.float(), teacher > 0  # (B, *F)
    on = (s - margin).pow(2) * (active & (s <= margin))
    off = (s + margin).pow(2) * (~active & (s > -margin))
    return (on + off).sum() / s.shape[0]


def layer_weights(n: int) -> list[float]:
    """2^(k-n+1) for k = 0..n-1: the deepest pair weighs 1, each shallower one half as much."""
    return [2.0 ** (k - n + 1) for k in range(n)]


@METHODS.register("ab")
class AB(Method):
    """Activation-boundary distillation: ``beta * sum_k w_k * ab_loss(connector(student_k), teacher_k)``."""

    auto_layers = "stages_preact"

    def __init__(self, student_layers: list[str] | str = "auto", teacher_layers: list[str] | str = "auto",
                 beta: float = 3e-3, margin: float = 1.0, pretrain_epochs: int = 30, main: bool = False) -> None:
        super().__init__()
        self.main = init_only_check("ab", pretrain_epochs, main)
        self.pairs = layer_pairs("ab", student_layers, teacher_layers)
        self.needs = feature_needs(self.pairs)
        self.beta, self.margin = beta, margin
        self.pretrain_epochs = check_pretrain_epochs("ab", pretrain_epochs)
        self.connectors = nn.ModuleList()

    def setup(self, ctx: SetupContext) -> None:
        """One connector per pair (identity when the shapes already match, as in the paper)."""
        self.connectors = nn.ModuleList(build_connector(s, t) for s, t in probed_shapes("ab", ctx, self.pairs))

    def _ab(self, s: ModelOutput, t: ModelOutput | None) -> Tensor:
        check_setup("ab", self.connectors, self.pairs)
        feats = paired_features("ab", s, t, self.pairs)
        weights = layer_weights(len(feats))
        return torch.stack([w * ab_loss(conn(fs), ft, self.margin)
                            for w, conn, (fs, ft) in zip(weights, self.connectors, feats)]).sum()

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        if not self.main:
            return LossOutput(s.logits.new_zeros(()), {})  # the init stage is over: ce (and kd) alone
        loss = self.beta * self._ab(s, t)
        return LossOutput(loss, {"ab": loss})

    def pretrain_loss(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        """The initialisation stage: the same scaled loss (RepDistiller's init stage keeps the 3/1000 scale)."""
        loss = self.beta * self._ab(s, t)
        return LossOutput(loss, {"ab_pretrain": loss})

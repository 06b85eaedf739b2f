"""Yuan et al. 2020, "Revisiting Knowledge Distillation via Label Smoothing Regularization" (CVPR): teacher-free
KD with a manually designed virtual teacher, Tf-KD_reg.

The virtual teacher puts ``correct_prob`` on the true class and spreads the rest evenly, ``u`` (B, C); the
student matches ``softmax(u / T)`` (tempered as in the reference code; the student's own logits are not):

    loss = (1 - alpha) * CE(s, y) + alpha * beta * KL(softmax(u / T) || softmax(s))

with the KL summed over classes and averaged over labelled samples. The reference code reduces the KL with
``nn.KLDivLoss()``'s elementwise mean (over B x C) times a ``multiplier``: that is ``beta = multiplier / C``.
Defaults are the reference's ResNet18 / CIFAR-100 setting (``reg_temperature`` 20, ``reg_alpha`` 0.1,
``multiplier`` 100 over 100 classes, so ``beta`` 1; ``correct_prob`` 0.99). At T = 20 the virtual teacher is
nearly uniform: the term is a smoothing regulariser, compared with ``lsr`` at the same strength in
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.methods.base import METHODS, Method, labelled_cross_entropy
from distill.types import Batch, LossOutput, ModelOutput, Needs, StepContext


def virtual_teacher(target: Tensor, num_classes: int, correct_prob: float) -> Tensor:
    """(B, C) probabilities: ``correct_prob`` on ``target`` (B,), ``(1 - correct_prob) / (C - 1)`` elsewhere."""
    u = torch.full((len(target), num_classes), (1.0 - correct_prob) / (num_classes - 1), device=target.device)
    return u.scatter(1, target.clamp(min=0)[:, None], correct_prob)


def tfkd_loss(logits: Tensor, target: Tensor, T: float, correct_prob: float) -> Tensor:
    """KL(softmax(u / T) || softmax(logits)) summed over classes, mean over the labelled rows of (B, C) logits;
    target (B,) with -1 for unlabelled rows (they have no virtual teacher). 0 (in the graph) without labels."""
    labelled = (target >= 0).float()  # (B,)
    p_v = F.softmax(virtual_teacher(target, logits.shape[1], correct_prob) / T, dim=1)  # (B, C)
    log_p_s = F.log_softmax(logits.float(), dim=1)  # (B, C)
    kl = (p_v * (p_v.log() - log_p_s)).sum(dim=1)  # (B,)
    return (kl * labelled).sum() / labelled.sum().clamp(min=1)


@METHODS.register("tfkd")
class TfKD(Method):
    """Teacher-free KD, the virtual-teacher regulariser (Tf-KD_reg); needs no teacher and includes its own CE."""

    needs = Needs(teacher=False)

    def __init__(self, T: float = 20.0, alpha: float = 0.1, beta: float = 1.0, correct_prob: float = 0.99) -> None:
        super().__init__()
        if T <= 0:
            raise ValueError("T must be positive")
        if not 0.0 < correct_prob < 1.0:
            raise ValueError("correct_prob must be in (0, 1)")
        self.T, self.alpha, self.beta, self.correct_prob = T, alpha, beta, correct_prob

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        ce = (1.0 - self.alpha) * labelled_cross_entropy(s.logits, batch.target, batch.labelled_count)
        reg = self.alpha * self.beta * tfkd_loss(s.logits, batch.target, self.T, self.correct_prob)
        return LossOutput(ce + reg, {"ce": ce, "tfkd": reg})

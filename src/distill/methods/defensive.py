"""Papernot et al. 2016, "Distillation as a Defense to Adversarial Perturbations against Deep Neural Networks".

The paper trains the teacher with its softmax at temperature T, labels the training set with that teacher's
probabilities at T, trains the student at the same T on those soft labels alone, and deploys the student at T=1.
A network trained at T learns logits about T times those of one trained at 1, so the teacher's soft labels at T
are (to that approximation) a T=1 teacher's ordinary probabilities. This method therefore takes the teacher as
it is (trained at ``teacher_T``, 1 for every pretrained network) and reproduces the paper's student objective:

    loss = CE(softmax(t / teacher_T), softmax(s / T)) + alpha * CE(s, y)

a cross-entropy with soft targets, averaged over the batch, with ``alpha`` 0 by default (the paper's student sees
no hard label). The student's logits grow to about T times the teacher's: at T=1 its softmax saturates, which is
what makes gradient attacks (FGSM, PGD) fail on it; Carlini and Wagner (2016) showed that this is gradient
masking, not robustness. Unlike ``kd`` (Hinton), teacher and student are not softened alike and there is no
T^2 factor: the student is meant to end with T-times larger logits, not the teacher's.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from distill.methods.base import METHODS, Method, labelled_cross_entropy
from distill.types import Batch, LossOutput, ModelOutput, Needs, StepContext


def defensive_loss(student_logits: Tensor, teacher_logits: Tensor, T: float, teacher_T: float = 1.0) -> Tensor:
    """CE(softmax(t / teacher_T), softmax(s / T)): (B, C) logits -> scalar, summed over C, mean over B (fp32)."""
    q = F.softmax(teacher_logits.float() / teacher_T, dim=-1)  # (B, C) the teacher's labels
    log_p = F.log_softmax(student_logits.float() / T, dim=-1)  # (B, C) the student at the training temperature
    return -(q * log_p).sum(dim=-1).mean()


@METHODS.register("defensive")
class DefensiveDistillation(Method):
    """Defensive distillation: the student trained at ``T`` (the paper: 20 to 100; 100 on MNIST) on the teacher's
    soft labels, evaluated at T=1. ``teacher_T``: the temperature the teacher was trained at (1 for a normally
    trained network, which stands for the paper's teacher trained at T); ``alpha``: weight of a hard-label
    cross-entropy (0 in the paper)."""

    needs = Needs(teacher=True)

    def __init__(self, T: float = 100.0, teacher_T: float = 1.0, alpha: float = 0.0) -> None:
        super().__init__()
        if T <= 0 or teacher_T <= 0:
            raise ValueError("T and teacher_T must be positive")
        self.T, self.teacher_T, self.alpha = T, teacher_T, alpha

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        assert t is not None, "defensive needs teacher outputs"
        soft = defensive_loss(s.logits, t.logits, self.T, self.teacher_T)
        ce = self.alpha * labelled_cross_entropy(s.logits, batch.target, batch.labelled_count)
        return LossOutput(soft + ce, {"defensive": soft, "ce": ce})

    def accepts_topk(self) -> bool:
        """Soft targets over every class: a cache must hold them all (``cache.k: all``, or k >= classes)."""
        return False

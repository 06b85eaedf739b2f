"""Huang, You, Wang, Qian & Xu, NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher" (DIST).

KL asks the student to match the teacher's probabilities exactly; DIST only asks for the same *relations*,
measured by Pearson correlation, which is invariant to a positive affine map of either prediction::

    Y = softmax(z / T) row-wise, (B, C)
    inter = 1 - mean_i pearson(Y_s[i, :], Y_t[i, :])      (per sample, across classes)
    intra = 1 - mean_c pearson(Y_s[:, c], Y_t[:, c])      (per class, across the batch)
    loss  = alpha * CE(s, y) + T^2 * (beta * inter + gamma * intra)

Defaults are the paper's ImageNet setting (beta = gamma = 1, T = 1, CE weight 1); for CIFAR-100 the paper
uses beta = gamma = 2 and T = 4. The intra term needs a batch of more than one sample.
"""

from __future__ import annotations

from torch import Tensor

from distill.errors import DistillError
from distill.methods.base import METHODS, Method, labelled_cross_entropy
from distill.types import Batch, LossOutput, ModelOutput, Needs, StepContext


def row_pearson(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of matching rows: (N, K), (N, K) -> (N,).

    ``eps`` in the denominator makes a constant row correlate 0 with anything (instead of NaN).
    """
    a = a - a.mean(dim=1, keepdim=True)  # (N, K)
    b = b - b.mean(dim=1, keepdim=True)  # (N, K)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def inter_class_relation(y_s: Tensor, y_t: Tensor) -> Tensor:
    """1 - mean over samples of the Pearson correlation across classes: (B, C), (B, C) -> scalar."""
    return 1.0 - row_pearson(y_s, y_t).mean()


def intra_class_relation(y_s: Tensor, y_t: Tensor) -> Tensor:
    """1 - mean over classes of the Pearson correlation across the batch: (B, C), (B, C) -> scalar."""
    return 1.0 - row_pearson(y_s.t(), y_t.t()).mean()


def dist_loss(student_logits: Tensor, teacher_logits: Tensor, T: float) -> tuple[Tensor, Tensor]:
    """(inter, intra) relation losses on softmax(logits / T), each scaled by T^2; (B, C) logits, fp32."""
    y_s = (student_logits.float() / T).softmax(dim=1)  # (B, C)
    y_t = (teacher_logits.float() / T).softmax(dim=1)  # (B, C)
    return T * T * inter_class_relation(y_s, y_t), T * T * intra_class_relation(y_s, y_t)


@METHODS.register("dist")
class DIST(Method):
    """DIST (Huang et al., NeurIPS 2022); replaces ``kd``, so it includes ``alpha * CE``.

    Terms: ``ce``, ``inter`` = beta * T^2 * inter-class loss, ``intra`` = gamma * T^2 * intra-class loss.
    Transfer-set samples (target -1) take part in both relation terms but not in the CE.
    """

    needs = Needs(teacher=True)

    def __init__(self, T: float = 1.0, alpha: float = 1.0, beta: float = 1.0, gamma: float = 1.0) -> None:
        super().__init__()
        if T <= 0:
            raise DistillError("dist: T must be positive")
        self.T, self.alpha, self.beta, self.gamma = T, alpha, beta, gamma

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        assert t is not None, "dist needs teacher outputs"
        inter, intra = dist_loss(s.logits, t.logits, self.T)
        ce = self.alpha * labelled_cross_entropy(s.logits, batch.target, batch.labelled_count)
        inter, intra = self.beta * inter, self.gamma * intra
        return LossOutput(ce + inter + intra, {"ce": ce, "inter": inter, "intra": intra})

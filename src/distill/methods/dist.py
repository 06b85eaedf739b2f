"""Huang, You, Wang, Qian & Xu, NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher" (DIST).

KL asks the student to match the teacher's probabilities exactly; DIST only asks for the same *relations*,
measured by Pearson correlation, which is invariant to a positive affine map of either prediction::

    Y = softmax(z / T) row-wise, (B, C)
    inter = 1 - mean_i pearson(Y_s[i, :], Y_t[i, :])      (per sample, across classes)
    intra = 1 - mean_c pearson(Y_s[:, c], Y_t[:, c])      (per class, across the batch)
    loss  = alpha * CE(s, y) + T^2 * (beta * inter + gamma * intra)

Defaults reproduce the official ImageNet setting: beta = gamma = 2, T = 1, CE weight 1. The official loss
(github.com/hunto/image_classification_sota, the ``classification`` submodule of hunto/DIST_KD, pinned at
d9662f7: ``lib/models/losses/dist_kd.py``) is built as ``DIST(beta=1, gamma=1, tau=1)``
(``lib/models/losses/kd_loss.py`` line 30) and multiplied by ``kd_loss_weight: 2.`` with ``ori_loss_weight: 1.``
(``configs/strategies/distill/resnet_dist.yaml`` lines 29-30, also ``dist_b2.yaml``; applied in
``kd_loss.py`` line 57), so inter and intra each carry an effective weight of 2. For CIFAR-100
(``dist_cifar.yaml``: ``kd: dist_t4``, ``kd_loss_weight: 2.``) use T = 4 with the same beta = gamma = 2.
The intra term needs a batch of more than one sample.
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

    Terms: ``ce``, ``inter`` = beta * T^2 * inter-class loss, ``intra`` = gamma * T^2 * intra-class loss;
    defaults (beta = gamma = 2) are the official code's effective ImageNet weights (module docstring).
    Transfer-set samples (target -1) take part in both relation terms but not in the CE.
    """

    needs = Needs(teacher=True)

    def __init__(self, T: float = 1.0, alpha: float = 1.0, beta: float = 2.0, gamma: float = 2.0) -> None:
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

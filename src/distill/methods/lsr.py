"""Label smoothing regularisation (Szegedy et al. 2016, "Rethinking the Inception Architecture"): cross-entropy
against ``(1 - eps) * one_hot + eps / C``. The teacher-free baseline that Tf-KD (``tfkd``) is compared with
(Yuan et al. 2020 read KD as a learned label smoothing)."""

from __future__ import annotations

from distill.methods.base import METHODS, Method, labelled_cross_entropy
from distill.types import Batch, LossOutput, ModelOutput, Needs, StepContext


@METHODS.register("lsr")
class LSR(Method):
    """Label-smoothed cross-entropy on the labelled samples; needs no teacher. ``eps`` in [0, 1)."""

    needs = Needs(teacher=False)

    def __init__(self, eps: float = 0.1, alpha: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= eps < 1.0:
            raise ValueError("eps must be in [0, 1)")
        self.eps, self.alpha = eps, alpha

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        ce = self.alpha * labelled_cross_entropy(s.logits, batch.target, batch.labelled_count, smoothing=self.eps)
        return LossOutput(ce, {"lsr": ce})

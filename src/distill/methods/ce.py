"""Plain cross-entropy on labelled samples: teacher training and the scratch baseline."""

from __future__ import annotations

from distill.methods.base import METHODS, Method, labelled_cross_entropy
from distill.types import Batch, LossOutput, ModelOutput, Needs, StepContext


@METHODS.register("ce")
class CE(Method):
    """Cross-entropy only; needs no teacher. Unlabelled samples are skipped."""

    needs = Needs(teacher=False)
    token_level = True

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        ce = self.alpha * labelled_cross_entropy(s.logits, batch.target, batch.labelled_count)
        return LossOutput(ce, {"ce": ce})

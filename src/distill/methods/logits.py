"""Logit matching: the student regresses the teacher's logits directly. ``p: 2`` is Ba & Caruana (2014, "Do Deep
Nets Really Need to be Deep?"): the mean squared error between logits; ``p: 1`` is the mean absolute error DFAD
(Fang et al. 2019) trains data-free students with, whose gradient does not vanish on confidently classified
samples the way a softmax's does (what its adversarial generator needs)."""

from __future__ import annotations

from torch import Tensor

from distill.methods.base import METHODS, Method, labelled_cross_entropy
from distill.types import Batch, LossOutput, ModelOutput, StepContext


def logit_distance(s: Tensor, t: Tensor, p: int) -> Tensor:
    """Mean over samples and classes of |s - t|^p for logits (B, C)."""
    diff = s - t
    return diff.abs().mean() if p == 1 else (diff**2).mean()


@METHODS.register("logits")
class LogitMatching(Method):
    """``beta * mean |z_s - z_t|^p`` plus ``alpha`` times cross-entropy on the labelled samples."""

    def __init__(self, p: int = 2, alpha: float = 0.0, beta: float = 1.0) -> None:
        super().__init__()
        if p not in (1, 2):
            raise ValueError(f"p must be 1 (mean absolute error) or 2 (mean squared error), got {p!r}")
        self.p, self.alpha, self.beta = p, alpha, beta

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        assert t is not None
        match = self.beta * logit_distance(s.logits, t.logits, self.p)
        ce = self.alpha * labelled_cross_entropy(s.logits, batch.target, batch.labelled_count)
        return LossOutput(ce + match, {"ce": ce, "logits": match})

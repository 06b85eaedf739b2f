"""Universal Logit Distillation (ULD; Boizard et al. 2024, "Towards Cross-Tokenizer Distillation: the Universal
Logit Distillation Loss for LLMs"): a teacher and a student with different tokenizers and vocabularies.

Their next-token distributions live on different vocabularies, so ULD compares their shapes: each distribution's
probabilities sorted in decreasing order, the shorter padded with zeros, and the L1 distance between the two
sorted vectors (the 1-Wasserstein distance between the distributions under a closed-form optimal transport),
averaged over positions; plus the student's own cross-entropy. The reference code pairs the first n positions of
the two sequences by index (done here too when the batch has no alignment); with an ``align`` field (``corpus``
with ``tokenizers: {teacher: A, student: B}``, ``distill.data.corpus_pair``) a position pairs with the teacher's
that has read exactly the same text, so the two distributions are about the same continuation. Class logits
(B, C_s) and (B, C_t) pair by sample: ULD also distils between classifiers with different class counts.
Defaults are the reference's: cross-entropy weight 1 (``alpha``), distillation weight 1 (``distillation_weight``),
both temperatures 1 (``T``). (A method entry's own ``weight`` in a recipe scales both terms.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.methods.base import METHODS, Method, labelled_cross_entropy
from distill.types import Batch, LossOutput, ModelOutput, Needs, StepContext


def uld_loss(student_logits: Tensor, teacher_logits: Tensor, T: float = 1.0) -> Tensor:
    """Mean over rows of sum |sort(p_s) - sort(p_t)|: (n, V_s) and (n, V_t) logits of aligned positions."""
    if len(student_logits) == 0:
        return student_logits.sum() * 0.0  # no aligned position: zero, still in the graph
    p_s = F.softmax(student_logits.float() / T, dim=-1).sort(dim=-1, descending=True).values  # (n, V_s)
    p_t = F.softmax(teacher_logits.float() / T, dim=-1).sort(dim=-1, descending=True).values  # (n, V_t)
    width = max(p_s.shape[1], p_t.shape[1])
    p_s, p_t = F.pad(p_s, (0, width - p_s.shape[1])), F.pad(p_t, (0, width - p_t.shape[1]))  # zeros: the tail
    return (p_s - p_t).abs().sum(dim=-1).mean()


def aligned(s: Tensor, t: Tensor, align: Tensor | None, target: Tensor) -> tuple[Tensor, Tensor]:
    """The paired rows of student and teacher logits: (n, V_s) and (n, V_t). Class logits (B, C): every sample.
    Token logits (B, S, V_s) and (B, S_t, V_t): the positions with a teacher partner (``align`` (B, S), -1 for
    none; without it, position j pairs with j) and a target that counts."""
    if s.ndim == 2:
        return s, t
    if align is None:  # the reference's pairing: by index, over the shorter sequence
        align = torch.arange(s.shape[1], device=s.device).expand(s.shape[:2])
        align = torch.where(align < t.shape[1], align, -1)
    rows = ((align >= 0) & (target >= 0)).nonzero(as_tuple=True)  # (B, S) positions that count
    return s[rows], t[rows[0], align[rows]]


@METHODS.register("uld")
class ULD(Method):
    """``alpha`` x cross-entropy + ``distillation_weight`` x ULD at temperature ``T`` (module docstring)."""

    needs = Needs(teacher=True)
    token_level = True
    cross_tokenizer = True

    def __init__(self, alpha: float = 1.0, distillation_weight: float = 1.0, T: float = 1.0) -> None:
        super().__init__()
        if T <= 0:
            raise ValueError("T must be positive")
        self.alpha, self.distillation_weight, self.T = alpha, distillation_weight, T

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        assert t is not None, "uld needs teacher outputs"
        align = next((v for k, v in batch.input.items() if k.endswith("align")), None) \
            if isinstance(batch.input, dict) else None
        uld = self.distillation_weight * uld_loss(*aligned(s.logits, t.logits, align, batch.target), T=self.T)
        ce = self.alpha * labelled_cross_entropy(s.logits, batch.target, batch.labelled_count)
        return LossOutput(ce + uld, {"ce": ce, "uld": uld})

    def cache_temperatures(self) -> tuple[float, ...]:
        return (float(self.T),)

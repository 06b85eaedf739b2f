"""Hinton et al. 2015, "Distilling the Knowledge in a Neural Network".

loss = alpha * CE(s, y) + beta * T^2 * KL(softmax(t / T) || softmax(s / T)), the KL summed over classes and
averaged over the batch (not over classes), with the CE over labelled samples only. T^2 keeps the soft-target
gradients on the same scale as the hard-target ones when T changes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.methods.base import METHODS, Method, labelled_cross_entropy
from distill.types import Batch, LossOutput, ModelOutput, Needs, StepContext, TopKLogits


def standardize_logits(logits: Tensor, eps: float = 1e-7) -> Tensor:
    """Z-score each row of (B, C) logits (Sun et al. 2024, "Logit Standardization in KD")."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + eps)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """T^2 * KL(softmax(t/T) || softmax(s/T)): (B, C) logits -> scalar, summed over C, mean over B.

    Computed in fp32: the log-softmax of tempered logits is precision-sensitive.
    """
    log_p_s = F.log_softmax(student_logits.float() / T, dim=-1)  # (B, C)
    log_p_t = F.log_softmax(teacher_logits.float() / T, dim=-1)  # (B, C)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(dim=-1)  # (B,)
    return kl.mean() * T * T


def kd_loss_topk(student_logits: Tensor, topk: TopKLogits, T: float) -> Tensor:
    """KD against a cached top-k teacher: the KL over the k stored classes plus one bin for all the others.

    The teacher's probabilities at T are exact on the stored classes, ``exp(v / T - lse_T)``, and the bin
    holds the rest of its mass, ``1 - sum``; the student's bin is the log-sum-exp of its own log-probs
    outside the top k. With k == C the bin is empty and this is ``kd_loss``. student_logits: (B, C).
    """
    log_p_s = F.log_softmax(student_logits.float() / T, dim=-1)  # (B, C)
    log_q_top = topk.values.float() / T - topk.lse[float(T)][:, None]  # (B, k)
    q_top = log_q_top.exp()
    kl = (q_top * (log_q_top - log_p_s.gather(1, topk.indices))).sum(dim=-1)  # (B,)
    if not topk.dense:
        q_tail = (1.0 - q_top.sum(dim=-1)).clamp(min=0.0)  # (B,)
        log_p_tail = log_p_s.scatter(1, topk.indices, float("-inf")).logsumexp(dim=-1)  # (B,)
        kl = kl + torch.xlogy(q_tail, q_tail) - q_tail * log_p_tail
    return kl.mean() * T * T


@METHODS.register("kd")
class KD(Method):
    """Hinton KD. ``alpha`` weighs the cross-entropy on labels, ``beta`` the soft-target term.

    ``standardize=True`` z-scores both logit vectors first, which makes very confident teachers usable.
    """

    needs = Needs(teacher=True)

    def __init__(self, T: float = 4.0, alpha: float = 0.1, beta: float = 0.9, standardize: bool = False) -> None:
        super().__init__()
        if T <= 0:
            raise ValueError("T must be positive")
        self.T, self.alpha, self.beta, self.standardize = T, alpha, beta, standardize

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        assert t is not None, "kd needs teacher outputs"
        s_logits, t_logits = s.logits, t.logits
        if self.standardize:
            s_logits, t_logits = standardize_logits(s_logits), standardize_logits(t_logits)
        ce = self.alpha * labelled_cross_entropy(s.logits, batch.target, batch.labelled_count)
        if t.topk is not None and not t.topk.dense and not self.standardize:
            kd = self.beta * kd_loss_topk(s.logits, t.topk, self.T)  # cached top-k teacher
        else:
            kd = self.beta * kd_loss(s_logits, t_logits, self.T)
        return LossOutput(ce + kd, {"ce": ce, "kd": kd})

    def accepts_topk(self) -> bool:
        """Plain KD is exact on top-k + tail; standardisation needs every logit's mean and std."""
        return not self.standardize

    def cache_temperatures(self) -> tuple[float, ...]:
        return (float(self.T),)

    def diagnose(self, teacher_logits: Tensor) -> list[str]:
        """Warn when the teacher's soft targets at this T are nearly one-hot (they then carry little
        "dark knowledge" and the KD term behaves like a rescaled cross-entropy)."""
        if self.standardize:
            return []
        top = torch.softmax(teacher_logits.float() / self.T, dim=-1).max(dim=-1).values.mean().item()
        if top < 0.97:
            return []
        return [f"kd: the teacher's soft targets at T={self.T:g} are nearly one-hot (mean top probability "
                f"{top:.3f}); the KD term then acts like cross-entropy scaled by ~{self.beta * self.T**2:.1f}x. "
                "Consider method.standardize=true (logit standardisation), a higher T, or a lower lr."]

"""Zhao, Cui, Song, Qiu & Liang, CVPR 2022, "Decoupled Knowledge Distillation" (DKD).

The KD loss splits into a target-class term and a non-target-class term::

    TCKD = KL([p_gt^t, 1 - p_gt^t] || [p_gt^s, 1 - p_gt^s])            (binary: target vs. the rest)
    NCKD = KL(softmax(t_{-gt} / T) || softmax(s_{-gt} / T))           (over the C - 1 non-target classes)
    KD   = TCKD + (1 - p_gt^t) * NCKD

Classical KD thus suppresses NCKD exactly where the teacher is confident. DKD weighs the two freely::

    loss = alpha * CE(s, y) + w(step) * T^2 * (dkd_alpha * TCKD + dkd_beta * NCKD)

each KL summed over its classes and averaged over the batch, all probabilities at temperature ``T``.
Defaults are the paper's / mdistiller's CIFAR-100 setting: alpha=1, dkd_alpha=1, dkd_beta=8, T=4 and a
20-epoch linear warm-up ``w`` of the DKD part (mdistiller uses dkd_beta in 1..8 per pair, and
alpha=dkd_alpha=0.5, dkd_beta=0.5, T=1 on ImageNet).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from distill.errors import DistillError
from distill.methods.base import METHODS, Method, labelled_cross_entropy
from distill.methods.kd import standardize_logits
from distill.types import Batch, LossOutput, ModelOutput, Needs, StepContext

# mdistiller ramps over 20 of 240 epochs; shorter runs keep that proportion.
REFERENCE_SCHEDULE = 240 / 20


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) from (B, K) log-probabilities -> (B,), summed over K. ``p`` is the teacher."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=1)


def _binary_log_probs(logits: Tensor, gt: Tensor) -> Tensor:
    """(B, C) tempered logits, (B,) class -> (B, 2) log [p_gt, 1 - p_gt], in log space (no log(1 - p))."""
    log_z = torch.logsumexp(logits, dim=1)  # (B,)
    gt_logit = logits.gather(1, gt[:, None]).squeeze(1)  # (B,)
    is_gt = F.one_hot(gt, logits.shape[1]).bool()  # (B, C)
    log_rest = torch.logsumexp(logits.masked_fill(is_gt, float("-inf")), dim=1)  # (B,)
    return torch.stack([gt_logit - log_z, log_rest - log_z], dim=1)  # (B, 2)


def _non_target(logits: Tensor, gt: Tensor) -> Tensor:
    """(B, C) logits -> (B, C - 1) with each row's ``gt`` column removed (order of the others kept)."""
    b, c = logits.shape
    keep = ~F.one_hot(gt, c).bool()  # (B, C), exactly C - 1 True per row
    return logits[keep].view(b, c - 1)


def dkd_loss(student_logits: Tensor, teacher_logits: Tensor, gt: Tensor, T: float) -> tuple[Tensor, Tensor]:
    """(TCKD, NCKD), each T^2-scaled, summed over classes and averaged over the batch.

    student_logits, teacher_logits: (B, C) with C >= 2; gt: (B,) class index per sample (no -1).
    The non-target distribution drops the target column instead of masking it with a large negative
    logit, so it is exact. Computed in fp32.
    """
    s = student_logits.float() / T  # (B, C)
    t = teacher_logits.float() / T  # (B, C)
    tckd = _kl(_binary_log_probs(t, gt), _binary_log_probs(s, gt))  # (B,)
    nckd = _kl(F.log_softmax(_non_target(t, gt), dim=1), F.log_softmax(_non_target(s, gt), dim=1))  # (B,)
    return tckd.mean() * T * T, nckd.mean() * T * T


def warmup_weight(ctx: StepContext, warmup_epochs: int) -> float:
    """Linear ramp from ~0 to 1 over the first W epochs, per step: ``min((step + 1) / (W * steps), 1)``.

    W = min(warmup_epochs, epochs / 12): mdistiller's 20 epochs of a 240-epoch schedule, shrunk
    proportionally for shorter runs (as reviewkd does) so they spend the same share of training ramping.
    At the end of epoch ``e`` (0-based) this equals mdistiller's per-epoch ``(e + 1) / W``.
    ``warmup_epochs=0`` disables the ramp.
    """
    span = min(float(warmup_epochs), ctx.epochs / REFERENCE_SCHEDULE)  # in epochs
    if span <= 0:
        return 1.0
    return min((ctx.step + 1) / (span * max(ctx.steps_per_epoch, 1)), 1.0)


@METHODS.register("dkd")
class DKD(Method):
    """Decoupled KD (Zhao et al., CVPR 2022); replaces ``kd``, so it includes ``alpha * CE``.

    Terms: ``ce``, ``tckd`` = w * dkd_alpha * T^2 * TCKD, ``nckd`` = w * dkd_beta * T^2 * NCKD, with ``w`` the
    warm-up weight (see ``warmup_weight``). Transfer-set samples (target -1) have no label to decouple on:
    the teacher's top-1 class stands in for it (they still get no CE).
    """

    needs = Needs(teacher=True)

    def __init__(self, T: float = 4.0, alpha: float = 1.0, dkd_alpha: float = 1.0, dkd_beta: float = 8.0,
                 warmup_epochs: int = 20, standardize: bool = False) -> None:
        super().__init__()
        if T <= 0 or warmup_epochs < 0:
            raise DistillError("dkd: need T > 0 and warmup_epochs >= 0")
        self.T, self.alpha, self.dkd_alpha, self.dkd_beta = T, alpha, dkd_alpha, dkd_beta
        self.warmup_epochs, self.standardize = warmup_epochs, standardize

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        assert t is not None, "dkd needs teacher outputs"
        if s.logits.shape[1] < 2:
            raise DistillError("dkd needs at least two classes")
        target = batch.target
        gt = torch.where(target >= 0, target, t.logits.argmax(dim=1))  # (B,)
        s_logits, t_logits = s.logits, t.logits
        if self.standardize:  # Sun et al. 2024: z-scored logits, so a student need not match the teacher's scale
            s_logits, t_logits = standardize_logits(s_logits), standardize_logits(t_logits)
        tckd, nckd = dkd_loss(s_logits, t_logits, gt, self.T)
        w = warmup_weight(ctx, self.warmup_epochs)
        ce = self.alpha * labelled_cross_entropy(s.logits, target, batch.labelled_count)
        tckd, nckd = w * self.dkd_alpha * tckd, w * self.dkd_beta * nckd
        return LossOutput(ce + tckd + nckd, {"ce": ce, "tckd": tckd, "nckd": nckd})

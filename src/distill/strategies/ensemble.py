"""Teacher ensembles for ``strategy: multi_teacher``: per-sample teacher weights and the ensembled target.

Weights ``w`` (N, B) are per teacher and per sample, and sum to 1 over the teachers for every sample:

- ``mean``: 1/N each.
- ``fixed``: given weights, normalised to sum to 1.
- ``confidence``: CA-MKD (Zhang et al. 2022): ``w_i = (1 - softmax_i(CE_i)) / (N - 1)`` where ``CE_i`` is
  teacher i's cross-entropy on the sample's label: teachers that predict the label better weigh more. A
  transfer-set sample without a label uses the ensemble's mean prediction (argmax) as its label.
- ``entropy``: ``w_i = softmax_i(-H(p_i))``: confident (low-entropy) teachers weigh more.

The target is the weighted mean of the teachers' softened distributions (``average: probs``, Hinton et al.
2015's ensemble; its gradient equals that of one KD term per teacher weighted by ``w``, the multi-teacher KD of
You et al. 2017 and CA-MKD), returned as logits ``T * log(sum_i w_i softmax(z_i / T))`` so that any logit method
softening it at T gets exactly that mixture; or the weighted mean of logits (``average: logits``: the
normalised weighted geometric mean of the distributions, the same at every temperature).
"""

from __future__ import annotations

import math
from contextlib import ExitStack
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.errors import DistillError
from distill.models import FrozenTeacher
from distill.taps import FeatureTaps
from distill.types import UNLABELLED, Batch, ModelOutput

WEIGHTINGS = ("mean", "fixed", "confidence", "entropy")
AVERAGES = ("probs", "logits")


def teacher_weights(logits: Tensor, target: Tensor | None, how: str, fixed: Tensor | None = None) -> Tensor:
    """Per-sample teacher weights (N, B) summing to 1 over teachers, from logits (N, B, C) and labels (B,)
    (-1: unlabelled; None: no labels at all, as at test time)."""
    n, b, _ = logits.shape
    if how == "mean":
        return logits.new_full((n, b), 1.0 / n)
    if how == "fixed":
        assert fixed is not None
        w = fixed.to(logits) / fixed.sum()
        return w[:, None].expand(n, b)
    logp = F.log_softmax(logits.float(), dim=-1)  # (N, B, C)
    if how == "entropy":
        entropy = -(logp.exp() * logp).sum(-1)  # (N, B)
        return torch.softmax(-entropy, dim=0)
    if how == "confidence":
        pseudo = logp.exp().mean(0).argmax(-1)  # (B,) the ensemble's mean prediction
        label = pseudo if target is None else torch.where(target == UNLABELLED, pseudo, target)
        ce = -logp.gather(-1, label[None, :, None].expand(n, b, 1)).squeeze(-1)  # (N, B)
        return (1.0 - torch.softmax(ce, dim=0)) / (n - 1)
    raise DistillError(f"unknown teacher weighting {how!r} (known: {', '.join(WEIGHTINGS)})")


def ensemble_logits(logits: Tensor, w: Tensor, average: str, T: float) -> Tensor:
    """The ensembled target (B, C) from teacher logits (N, B, C) and weights (N, B) (see the module doc)."""
    if average == "logits":
        return (w[..., None] * logits).sum(0)
    p = (w[..., None] * torch.softmax(logits.float() / T, dim=-1)).sum(0)  # (B, C) mixture at T
    return T * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))


class EnsembleModel(nn.Module):
    """The teachers as one frozen model: ``forward(x)`` gives the ensembled logits (no labels: ``confidence``
    falls back to the ensemble's own prediction). What the report evaluates as the teacher row."""

    reads_whole_input = True  # every FrozenTeacher member selects its own input keys

    def __init__(self, members: dict[str, FrozenTeacher], how: str, fixed: Tensor | None, average: str,
                 T: float) -> None:
        super().__init__()
        self.members = nn.ModuleDict(members)
        self.how, self.average, self.T = how, average, T
        self.register_buffer("fixed", fixed, persistent=False)

    def combine(self, logits: Tensor, target: Tensor | None) -> tuple[Tensor, Tensor]:
        """(ensembled logits (B, C), weights (N, B)) from stacked teacher logits (N, B, C)."""
        w = teacher_weights(logits, target, self.how, self.fixed)
        return ensemble_logits(logits, w, self.average, self.T), w

    @torch.no_grad()
    def forward(self, x: Any) -> Tensor:
        return self.through(x)

    def through(self, x: Any) -> Tensor:
        """``forward`` with autograd in the input (an adversarial attack on the ensemble), never in the teachers'
        parameters, which stay frozen."""
        logits = torch.stack([m.through(x) for m in self.members.values()])  # (N, B, C)
        return self.combine(logits, None)[0]


class Targets:
    """Teacher outputs for a training batch from several teachers: each one live or read from its own cache,
    ensembled per sample; each teacher's own outputs (features included, for methods that name it) ride along
    in ``ModelOutput.by_teacher``. The engine calls it instead of a single teacher (``FitJob.targets``)."""

    def __init__(self, ensemble: EnsembleModel, caches: dict[str, Any], taps: dict[str, list[str]]) -> None:
        self.ensemble, self.caches, self.taps = ensemble, caches, taps
        self._taps: dict[str, FeatureTaps] = {}
        self.last_weights: Tensor | None = None  # (N, B) of the latest batch, for inspection and tests

    def to(self, device: Any) -> Targets:
        self.ensemble.to(device)
        return self

    def attach(self) -> ExitStack:
        """Hooks on the live teachers whose features methods read; removed when the returned stack closes."""
        stack = ExitStack()
        self._taps = {n: stack.enter_context(FeatureTaps(self.ensemble.members[n].model, paths))
                      for n, paths in self.taps.items() if paths and self.caches.get(n) is None}
        return stack

    def tap_shapes(self, methods: Any, x: Any) -> dict[str, dict[str, tuple[int, ...]]]:
        from distill.engine.loop import teacher_tap_shapes

        return {n: teacher_tap_shapes(self.ensemble.members[n], methods.taps_of(n), x)
                for n in methods.named_teachers}

    @torch.no_grad()
    def __call__(self, batch: Batch) -> ModelOutput:
        from distill.engine.loop import model_output

        outs = {}
        for name, member in self.ensemble.members.items():
            cache = self.caches.get(name)
            outs[name] = cache.lookup(batch.index, batch.view) if cache is not None else \
                model_output(member, batch, self._taps.get(name))
        logits, w = self.ensemble.combine(torch.stack([o.logits.float() for o in outs.values()]), batch.target)
        self.last_weights = w
        return ModelOutput(logits, by_teacher=outs)


def check_weighting(how: str, weights: list[float] | None, average: str, n: int | None = None) -> None:
    """Refuse bad ensemble settings with one line (``n``: the number of teachers, when known)."""
    if how not in WEIGHTINGS:
        raise DistillError(f"strategy.weighting: unknown {how!r} (known: {', '.join(WEIGHTINGS)})")
    if average not in AVERAGES:
        raise DistillError(f"strategy.average: unknown {average!r} (known: {', '.join(AVERAGES)})")
    if (how == "fixed") != (weights is not None):
        raise DistillError("strategy.weights (one number per teacher) goes with weighting: fixed, and only with it")
    if weights is not None:
        if not all(math.isfinite(v) and v >= 0 for v in weights) or sum(weights) <= 0:
            raise DistillError(f"strategy.weights must be non-negative with a positive sum, got {weights}")
        if n is not None and len(weights) != n:
            raise DistillError(f"strategy.weights has {len(weights)} numbers for {n} teachers")

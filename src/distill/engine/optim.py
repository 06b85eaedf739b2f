"""Optimizers and per-step learning-rate schedules (warm-up, step, cosine)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from distill.recipe import OptimSpec, ScheduleSpec


def build_optimizer(params: Iterable[nn.Parameter], spec: OptimSpec) -> torch.optim.Optimizer:
    """SGD / Adam / AdamW from the recipe's optimizer section."""
    params = [p for p in params if p.requires_grad]
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum, nesterov=spec.nesterov,
                               weight_decay=spec.weight_decay)
    cls = torch.optim.Adam if spec.name == "adam" else torch.optim.AdamW
    return cls(params, lr=spec.lr, weight_decay=spec.weight_decay)


def lr_factor(step: int, spec: ScheduleSpec, steps_per_epoch: int, epochs: int, base_lr: float) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based): linear warm-up, then the schedule."""
    total = max(1, steps_per_epoch * epochs)
    warm = int(round(spec.warmup_epochs * steps_per_epoch))
    if warm and step < warm:
        return (step + 1) / warm
    if spec.name == "constant":
        return 1.0
    if spec.name == "step":
        epoch = step // max(1, steps_per_epoch)
        return spec.gamma ** sum(epoch >= m for m in spec.milestones)
    progress = (step - warm) / max(1, total - warm)  # cosine from the end of warm-up to the last step
    floor = spec.min_lr / base_lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_scheduler(opt: torch.optim.Optimizer, spec: ScheduleSpec, steps_per_epoch: int, epochs: int,
                    pretrain_epochs: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimizer step; a pre-training stage runs at the base lr and the
    schedule starts with the main stage."""
    base = opt.param_groups[0]["lr"]
    offset = pretrain_epochs * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 1.0 if step < offset else lr_factor(step - offset, spec, steps_per_epoch, epochs, base))

"""Optimizers and per-step learning-rate schedules (warm-up, step, cosine)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from distill.recipe import OptimSpec, ScheduleSpec

Group = tuple[list[nn.Parameter], OptimSpec, ScheduleSpec]
"""Parameters that train with their own optimizer and schedule (a data-free run's generator)."""


def build_optimizer(params: Iterable[nn.Parameter], spec: OptimSpec,
                    groups: list[Group] | None = None) -> torch.optim.Optimizer:
    """SGD / Adam / AdamW from the recipe's optimizer section. ``groups``: parameters (among ``params``) with
    their own optimizer settings; the result then steps every optimizer as one (``RoleOptimizers``)."""
    params = [p for p in params if p.requires_grad]
    if not groups:
        return _one_optimizer(params, spec)
    own = {id(p) for g, _, _ in groups for p in g}
    parts = [_one_optimizer([p for p in params if id(p) not in own], spec)]
    parts += [_one_optimizer([p for p in g if p.requires_grad], s) for g, s, _ in groups]
    return RoleOptimizers(parts)


class RoleOptimizers(torch.optim.Optimizer):
    """Several optimizers (say Adam for a generator beside SGD for a student) stepped as one.

    ``param_groups`` are the parts' own group dicts, in order, so one LambdaLR (with a schedule per group), the
    grad scaler and ``zero_grad`` reach every part; ``state_dict`` holds each part's state."""

    def __init__(self, parts: list[torch.optim.Optimizer]) -> None:
        super().__init__([p for part in parts for g in part.param_groups for p in g["params"]], {})
        self.parts = parts
        self.param_groups = [g for part in parts for g in part.param_groups]

    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for part in self.parts:
            part.step()

    def state_dict(self) -> dict:  # type: ignore[override]
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state_dict: dict) -> None:  # type: ignore[override]
        for part, state in zip(self.parts, state_dict["parts"], strict=True):
            part.load_state_dict(state)
        self.param_groups = [g for part in self.parts for g in part.param_groups]


def _one_optimizer(params: list[nn.Parameter], spec: OptimSpec) -> torch.optim.Optimizer:
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
                    pretrain_epochs: int = 0, groups: list[Group] | None = None) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimizer step; a pre-training stage runs at the base lr and the
    schedule starts with the main stage. ``groups`` (see ``build_optimizer``) follow their own schedules."""
    offset = pretrain_epochs * steps_per_epoch
    specs = [spec] * (len(opt.param_groups) - len(groups or [])) + [s for _, _, s in groups or []]

    def factor(s: ScheduleSpec, base: float) -> Callable[[int], float]:
        return lambda step: 1.0 if step < offset else lr_factor(step - offset, s, steps_per_epoch, epochs, base)
    return torch.optim.lr_scheduler.LambdaLR(opt, [factor(s, g["lr"]) for s, g in zip(specs, opt.param_groups)])

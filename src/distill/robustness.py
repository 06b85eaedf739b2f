"""Adversarial robustness of the report's models: white-box FGSM and PGD top-1 on the test split.

- FGSM (Goodfellow et al. 2015): one step of ``eps * sign(grad_x CE)`` from the clean input.
- PGD (Madry et al. 2018): a random start uniform in the eps-ball, then ``steps`` steps of ``step_size *
  sign(grad_x CE)`` (default ``2.5 * eps / steps``), each projected back to the eps-ball and the valid range.

Each model is attacked through its own gradients (white-box), with the cross-entropy on the true labels, in eval
mode. ``eps`` and ``step_size`` are in the units of the raw input, before the dataset's normalisation (MNIST:
pixels in [0, 1]); the models see normalised inputs ``(x - mean) / std``, so the attack works in those and
divides eps by each channel's std. Adversarial inputs stay in the valid range: ``range: [lo, hi]`` of the spec,
by default the min and max of the raw test inputs evaluated. A clean input is always valid, even where float
rounding puts it a hair outside the range, so at eps 0 both attacks return the clean inputs exactly.

Nothing rescales logits or gradients: a model whose softmax saturates (defensive distillation, whose logits grow
with the training temperature) can give zero gradients and look robust to FGSM. That is gradient masking (Carlini
and Wagner 2016), and the numbers show it as it is. A teacher is attacked through its frozen wrapper's
``through`` (gradients reach the input, never the teacher's parameters, which keep ``requires_grad`` False).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.data.base import _stat_shape
from distill.data.stream import batches
from distill.errors import DistillError
from distill.evaluate import _eval_mode
from distill.models.teacher import Keys, as_logits, feed

if TYPE_CHECKING:
    from distill.data import DataSplits
    from distill.recipe import RobustnessSpec
    from distill.run import Trained

Forward = Callable[[Tensor], Tensor]
"""A model as a function of a normalised input batch (B, ...) to logits (B, C), differentiable in the input."""

DEFAULT_BATCH = 256  # attack batches when the plan's evaluation batch size is measured (None)


def check_inputs(data: DataSplits) -> None:
    """Refuse, in one line, data whose inputs the attacks cannot perturb: dict inputs or token ids."""
    if isinstance(data.input_shape, dict):
        raise DistillError(f"eval.robustness: the attacks perturb one input tensor, but {data.name}'s inputs are "
                           f"a dict of fields ({', '.join(sorted(data.input_shape))}); remove eval.robustness")
    x = getattr(data.test, "x", None)
    if data.tokens or (isinstance(x, Tensor) and not x.is_floating_point()):
        raise DistillError(f"eval.robustness: {data.name}'s inputs are token ids, which have no small "
                           "perturbation; remove eval.robustness")


def forward_of(model: nn.Module, keys: Keys = None) -> Forward:
    """``model`` as a differentiable function of its input: a frozen teacher through ``through`` (its own
    preprocessing, autograd kept for the input; its ``forward`` runs without autograd), any other model as
    called in training."""
    through = getattr(model, "through", None)
    if callable(through):
        return lambda x: as_logits(through(x))
    return lambda x: as_logits(feed(model, x, keys))


def input_grad(fn: Forward, x: Tensor, y: Tensor) -> Tensor:
    """d CE(fn(x), y) / dx, (B, ...) like ``x``. Summed, not averaged, over the batch: each sample's gradient
    is its own loss's, not scaled down by the batch size (which could underflow on its own). Only the input
    gets a gradient: ``autograd.grad`` leaves every parameter's ``.grad`` untouched."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        loss = F.cross_entropy(fn(x).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def box(x: Tensor, eps: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Per-element bounds (each like ``x``) of the eps-ball around ``x`` within the valid range [lo, hi]
    (normalised units, broadcastable). The range is widened to hold ``x`` itself, so a clean input is never
    moved by the clamp (float rounding of a user range could otherwise put a pixel a hair outside it)."""
    lower = torch.maximum(torch.minimum(lo, x), x - eps)  # (B, ...)
    upper = torch.minimum(torch.maximum(hi, x), x + eps)  # (B, ...)
    return lower, upper


def fgsm(fn: Forward, x: Tensor, y: Tensor, eps: Tensor, lo: Tensor, hi: Tensor,
         grad: Tensor | None = None) -> Tensor:
    """FGSM adversarial inputs (B, ...): ``x + eps * sign(grad)``, clamped to the valid range.
    ``eps``, ``lo``, ``hi``: normalised units, broadcastable to ``x`` (per channel); ``grad``: the input gradient
    when already computed."""
    lower, upper = box(x, eps, lo, hi)
    grad = input_grad(fn, x, y) if grad is None else grad
    step = eps * grad.sign()  # a zero gradient (saturated softmax) moves nothing
    return torch.clamp(x + step, lower, upper).detach()


def pgd(fn: Forward, x: Tensor, y: Tensor, eps: Tensor, lo: Tensor, hi: Tensor, *, steps: int,
        step_size: Tensor, generator: torch.Generator) -> Tensor:
    """PGD adversarial inputs (B, ...): a start uniform in the eps-ball (drawn on the CPU from ``generator``, so
    a seed gives the same start on any device), then ``steps`` signed-gradient steps of ``step_size``, each
    projected to the eps-ball and the valid range (their intersection is a box, so the projection is a clamp)."""
    lower, upper = box(x, eps, lo, hi)
    noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device) * 2 - 1  # (B, ...) in [-1, 1)
    adv = torch.clamp(x + eps * noise, lower, upper)
    for _ in range(steps):
        adv = torch.clamp(adv + step_size * input_grad(fn, adv, y).sign(), lower, upper).detach()
    return adv


def step_size(spec: RobustnessSpec) -> float:
    """PGD's step in raw units: the spec's, else Madry et al.'s ``2.5 * eps / steps`` (the walk can cross the
    whole ball and back, whatever the number of steps)."""
    return spec.step_size if spec.step_size is not None else 2.5 * spec.eps / spec.steps


def _per_channel(values: Tensor, like: Tensor) -> Tensor:
    """(C,) or (1,) per-channel values shaped to broadcast over a batch like ``like`` (B, C, ...)."""
    return values.reshape(_stat_shape(like, values.numel())).to(like.device, like.dtype)


def raw_range(spec: RobustnessSpec, data: DataSplits, n: int, batch_size: int) -> tuple[float, float]:
    """(lo, hi) of valid raw inputs: the spec's ``range``, else the min and max of the first ``n`` raw test
    inputs (one pass; ``x * std + mean`` per channel)."""
    if spec.range is not None:
        return float(spec.range[0]), float(spec.range[1])
    lo, hi = float("inf"), float("-inf")
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    for _, x in batches(data.test, batch_size, 0, n):
        raw = x.float() * _per_channel(std, x) + _per_channel(mean, x)  # (B, ...)
        lo, hi = min(lo, float(raw.min())), max(hi, float(raw.max()))
    return lo, hi


def attack_top1(fn: Forward, data: DataSplits, spec: RobustnessSpec, *, n: int, batch_size: int, seed: int,
                bounds: tuple[float, float], device: torch.device) -> dict[str, float]:
    """Clean, FGSM and PGD top-1 of ``fn`` on the first ``n`` test samples, in batches of ``batch_size``, and
    ``zero_grad``: the share of them whose input gradient is exactly zero (an underflowed, saturated softmax)."""
    mean, std = torch.tensor(data.mean), torch.tensor(data.std)
    generator = torch.Generator().manual_seed(seed)  # the same random starts for every model of a run
    steps, step_raw = spec.steps, step_size(spec)
    hits = {"clean": 0, "fgsm": 0, "pgd": 0, "zero_grad": 0}
    for index, x in batches(data.test, batch_size, 0, n):
        x, y = x.to(device).float(), data.test.y[index].to(device)  # (B, ...), (B,)
        s, m = _per_channel(std, x), _per_channel(mean, x)
        eps, step = spec.eps / s, step_raw / s  # raw units -> normalised units, per channel
        lo, hi = (bounds[0] - m) / s, (bounds[1] - m) / s
        grad = input_grad(fn, x, y)  # (B, ...)
        hits["zero_grad"] += int((grad.flatten(1) == 0).all(dim=1).sum())  # masked: FGSM cannot move these
        adv = {"clean": x, "fgsm": fgsm(fn, x, y, eps, lo, hi, grad),
               "pgd": pgd(fn, x, y, eps, lo, hi, steps=steps, step_size=step, generator=generator)}
        with torch.no_grad():
            for name, inputs in adv.items():
                hits[name] += int((fn(inputs).argmax(dim=1) == y).sum())
    return {k: v / max(n, 1) for k, v in hits.items()}


def robustness_metrics(spec: RobustnessSpec, data: DataSplits, trained: dict[str, Trained], *,
                       batch_size: int | None, seed: int) -> dict[str, dict[str, Any]]:
    """Per role, the report's robustness metrics: ``robust_clean_top1`` (clean top-1 on the attacked samples),
    ``fgsm_top1``, ``pgd_top1``, ``zero_grad_share`` (the share of samples whose input gradient is exactly zero:
    gradient masking made visible) and the settings used (``robust_eps``, ``pgd_steps``, ``pgd_step_size``,
    ``robust_range``, ``robust_samples``). A teacher is attacked through its frozen wrapper (``Trained.frozen``)."""
    check_inputs(data)
    n = len(data.test) if spec.samples is None else min(spec.samples, len(data.test))
    bs = batch_size or DEFAULT_BATCH
    bounds = raw_range(spec, data, n, bs)
    settings = {"robust_eps": spec.eps, "pgd_steps": spec.steps, "pgd_step_size": step_size(spec),
                "robust_range": list(bounds), "robust_samples": n}
    out: dict[str, dict[str, Any]] = {}
    for role, t in trained.items():
        model, keys = (t.frozen, None) if t.frozen is not None else (t.model, t.inputs)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with _eval_mode(model):  # every submodule's own training flag comes back afterwards
            top1 = attack_top1(forward_of(model, keys), data, spec, n=n, batch_size=bs, seed=seed, bounds=bounds,
                               device=device)
        out[role] = {"robust_clean_top1": top1["clean"], "fgsm_top1": top1["fgsm"], "pgd_top1": top1["pgd"],
                     "zero_grad_share": top1["zero_grad"], **settings}
    return out

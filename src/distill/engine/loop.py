"""The one training loop: teacher training, scratch students and every distillation mode.

The engine never names a method: it asks the ``MethodSet`` what it needs (teacher outputs, taps), obtains
those outputs itself, and backprops the summed loss.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from distill.engine.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from distill.engine.logs import EpochLog
from distill.engine.optim import build_optimizer, build_scheduler
from distill.errors import NonFiniteLossError
from distill.methods.base import MethodSet
from distill.models import as_logits
from distill.recipe import TrainSpec
from distill.taps import FeatureTaps
from distill.types import Batch, ModelOutput, SetupContext, StepContext

EvalFn = Callable[[nn.Module], dict[str, float]]


@dataclass
class FitJob:
    """Everything one training run needs; ``out_dir`` is the role's folder (e.g. ``runs/x/student``)."""

    model: nn.Module
    methods: MethodSet
    loader: Any  # distill.data.BatchLoader (iterable of Batch, with set_epoch and len)
    train: TrainSpec
    out_dir: Path
    seed: int
    fingerprint: str
    teacher: nn.Module | None = None  # a FrozenTeacher, when the methods need one
    evaluate: EvalFn | None = None
    resume: bool = False
    device: str = "cpu"
    desc: str = "train"
    num_classes: int = 0  # 0: inferred from the labels
    log: Callable[[str], None] = print
    history: list[dict[str, Any]] = field(default_factory=list)


def fit(job: FitJob) -> list[dict[str, Any]]:
    """Train ``job.model`` for ``job.train.epochs`` epochs, checkpointing each epoch; returns the history."""
    model = job.model.to(job.device)
    _setup_methods(job)
    methods = job.methods.to(job.device)
    params = list(model.parameters()) + list(methods.parameters())
    opt = build_optimizer(params, job.train.optimizer)
    pre = methods.pretrain_epochs
    sched = build_scheduler(opt, job.train.schedule, len(job.loader), job.train.epochs, pre)
    start = _start(job, opt, sched)
    logger = EpochLog(job.out_dir)
    for epoch in range(start, pre + job.train.epochs):
        stats = _train_epoch(job, opt, sched, params, epoch)
        if job.evaluate is not None:
            stats.update(job.evaluate(model))
        job.history.append(stats)
        save_checkpoint(job.out_dir, model=model, methods=methods, optimizer=opt, scheduler=sched,
                        epoch=epoch + 1, history=job.history, fingerprint=job.fingerprint)
        logger.write(job.history)
        job.log(_describe(job.desc, stats))
    logger.close()
    return job.history


def _setup_methods(job: FitJob) -> None:
    classes = job.num_classes or int(job.loader.ds.y.max()) + 1
    setup_methods(job.methods, job.model, job.teacher, job.loader.ds.x[:2].to(job.device),
                  num_samples=len(job.loader.ds), num_classes=classes)


def setup_methods(methods: MethodSet, model: nn.Module, teacher: nn.Module | None, x: Tensor, *,
                  num_samples: int, num_classes: int) -> None:
    """Dry-run student and teacher on a small batch ``x`` so methods build connectors from real tap shapes."""
    s_shapes = _tap_shapes(model, model, methods.student_taps, x)
    t_shapes = {}
    if teacher is not None and methods.teacher_taps:
        hooked = getattr(teacher, "model", teacher)  # FrozenTeacher: hook the wrapped model
        t_shapes = _tap_shapes(teacher, hooked, methods.teacher_taps, x)
    methods.setup(SetupContext(student_shapes=s_shapes, teacher_shapes=t_shapes, num_samples=num_samples,
                               num_classes=num_classes))


def _tap_shapes(run: nn.Module, hooked: nn.Module, paths: list[str], x: Tensor) -> dict[str, tuple[int, ...]]:
    if not paths:
        return {}
    modes = [(m, m.training) for m in run.modules()]
    run.eval()  # no BatchNorm statistics updated by the dry run
    try:
        with FeatureTaps(hooked, paths) as taps, torch.no_grad():
            run(x)
            return {k: tuple(v.shape) for k, v in taps.feats.items()}
    finally:
        for m, mode in modes:
            m.training = mode


def _start(job: FitJob, opt: torch.optim.Optimizer, sched: Any) -> int:
    """Resume from the last complete checkpoint, or start fresh (clearing a stale one)."""
    ckpt = find_checkpoint(job.out_dir)
    if job.resume and ckpt is not None:
        state = load_checkpoint(ckpt, model=job.model, methods=job.methods, optimizer=opt, scheduler=sched,
                                fingerprint=job.fingerprint)
        job.history = state.history
        job.log(f"{job.desc}: resumed from {ckpt} after epoch {state.epoch}")
        return state.epoch
    for name in ("checkpoint", "checkpoint.old", "checkpoint.tmp"):
        shutil.rmtree(job.out_dir / name, ignore_errors=True)
    job.out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(job.seed)  # dropout and other in-loop randomness replay from the seed
    return 0


def _train_epoch(job: FitJob, opt: torch.optim.Optimizer, sched: Any, params: list[nn.Parameter],
                 epoch: int) -> dict[str, Any]:
    job.model.train()
    job.methods.train()
    job.loader.set_epoch(epoch)  # the global epoch: data order never repeats across stages
    n_steps = len(job.loader)
    pre = job.methods.pretrain_epochs
    stage, stage_epoch, stage_epochs = ("pretrain", epoch, pre) if epoch < pre else \
        ("main", epoch - pre, job.train.epochs)
    meter = _Meter(job, epoch, n_steps)
    with ExitStack() as stack:
        s_taps = stack.enter_context(FeatureTaps(job.model, job.methods.student_taps))
        t_taps = None
        if job.teacher is not None and job.methods.teacher_taps:
            t_taps = stack.enter_context(FeatureTaps(getattr(job.teacher, "model", job.teacher),
                                                         job.methods.teacher_taps))
        bar = stack.enter_context(tqdm(total=n_steps, desc=f"{job.desc} {stage} {stage_epoch + 1}/{stage_epochs}",
                                       leave=False, disable=None, dynamic_ncols=True))
        for i, batch in enumerate(job.loader):
            batch = batch.to(job.device)
            ctx = StepContext(epoch=stage_epoch, step=stage_epoch * n_steps + i, epochs=stage_epochs,
                              steps_per_epoch=n_steps, stage=stage)
            s_out = _forward(job.model, batch, s_taps)
            t_out = _forward(job.teacher, batch, t_taps) if job.methods.needs_teacher else None
            out = job.methods(s_out, t_out, batch, ctx)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            if job.train.grad_clip:
                nn.utils.clip_grad_norm_(params, job.train.grad_clip)
            opt.step()
            sched.step()
            meter.add(out.loss, out.terms, len(batch.target))
            bar.update(1)
            if (i + 1) % job.train.log_every == 0:
                bar.set_postfix_str(meter.flush(), refresh=False)
    meter.flush()
    stats = meter.summary(opt.param_groups[0]["lr"])
    stats.update(stage=stage, stage_epoch=stage_epoch + 1, stage_epochs=stage_epochs)
    return stats


def _forward(model: nn.Module | None, batch: Batch, taps: FeatureTaps | None) -> ModelOutput:
    assert model is not None, "the methods need a teacher but none was given"
    logits = as_logits(model(batch.input))
    if taps is None:
        return ModelOutput(logits)
    feats = dict(taps.feats)
    taps.clear()
    return ModelOutput(logits, feats)


class _Meter:
    """Running loss terms without a host sync per step: detached values are stacked and checked for
    non-finite values every ``log_every`` steps (and at the end of the epoch)."""

    def __init__(self, job: FitJob, epoch: int, n_steps: int) -> None:
        self.job, self.epoch, self.n_steps = job, epoch, n_steps
        self.window: list[tuple[Tensor, dict[str, Tensor]]] = []
        self.sums: dict[str, float] = {}
        self.steps = 0
        self.samples = 0
        self.t0 = time.perf_counter()

    def add(self, loss: Tensor, terms: dict[str, Tensor], n: int) -> None:
        self.window.append((loss.detach(), {k: v.detach() for k, v in terms.items()}))
        self.samples += n

    def flush(self) -> str:
        if self.window:
            losses = torch.stack([w[0].float() for w in self.window])  # (W,)
            bad = (~torch.isfinite(losses)).nonzero()
            if len(bad):
                self._fail(self.steps + int(bad[0]), self.window[int(bad[0])][1])
            self.sums["loss"] = self.sums.get("loss", 0.0) + float(losses.sum())
            for key in self.window[0][1]:
                vals = torch.stack([w[1][key].float() for w in self.window])
                self.sums[key] = self.sums.get(key, 0.0) + float(vals.sum())
            self.steps += len(self.window)
            self.window = []
        rate = self.samples / max(1e-9, time.perf_counter() - self.t0)
        return " ".join(f"{k} {v / max(1, self.steps):.4f}" for k, v in self.sums.items()) + f" {rate:.0f}/s"

    def _fail(self, step_in_epoch: int, terms: dict[str, Tensor]) -> None:
        ckpt = find_checkpoint(self.job.out_dir)
        kept = f"kept the last good checkpoint {ckpt}" if ckpt else "no checkpoint was written yet"
        shown = ", ".join(f"{k}={float(v):.4g}" for k, v in terms.items())
        raise NonFiniteLossError(
            f"{self.job.desc}: non-finite loss at epoch {self.epoch + 1}, step {step_in_epoch + 1} "
            f"(global step {self.epoch * self.n_steps + step_in_epoch + 1}; {shown}); training stopped, {kept}. "
            "Lower the learning rate or set train.grad_clip.")

    def summary(self, lr: float) -> dict[str, Any]:
        seconds = time.perf_counter() - self.t0
        out: dict[str, Any] = {"epoch": self.epoch + 1, "lr": lr}
        out.update({k: v / max(1, self.steps) for k, v in self.sums.items()})
        out.update({"seconds": round(seconds, 3), "samples_per_s": round(self.samples / max(seconds, 1e-9), 1)})
        return out


def _describe(desc: str, stats: dict[str, Any]) -> str:
    stage = "" if stats["stage"] == "main" else " (pre-training stage)"
    parts = [f"{desc} epoch {stats['stage_epoch']}/{stats['stage_epochs']}{stage}",
             f"loss {stats.get('loss', float('nan')):.4f}"]
    for key in ("val_top1", "test_top1"):
        if key in stats:
            parts.append(f"{key.split('_')[0]} {100 * stats[key]:.2f}%")
    parts.append(f"{stats['seconds']:.1f}s ({stats['samples_per_s']:.0f} samples/s)")
    return "  ".join(parts)

"""The one training loop: teacher training, scratch students and every distillation mode.

The engine never names a method: it asks the ``MethodSet`` what it needs (teacher outputs, taps), obtains
those outputs itself, and backprops the summed loss.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from distill.engine.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from distill.engine.logs import EpochLog
from distill.engine.meter import Meter
from distill.engine.optim import build_optimizer, build_scheduler
from distill.errors import DistillError
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
    cache: Any = None  # a distill.cache.TeacherCache: teacher outputs read instead of computed
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
    if job.train.channels_last:
        model.to(memory_format=torch.channels_last)
    step = _Step(job)
    for epoch in range(start, pre + job.train.epochs):
        stats = _train_epoch(job, opt, sched, params, epoch, step)
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


class _Step:
    """What stays fixed across an epoch's steps: the forward callable, autocast, grad scaler, layout."""

    def __init__(self, job: FitJob) -> None:
        spec, dev = job.train, torch.device(job.device).type
        if spec.precision == "fp16" and dev != "cuda":
            raise DistillError("train.precision=fp16 needs a CUDA device; use bf16 on CPU")
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(spec.precision)
        self.dev = dev
        self.scaler = torch.amp.GradScaler(dev, enabled=spec.precision == "fp16")
        self.channels_last = spec.channels_last
        self.model = job.model
        if spec.compile:  # compile a view for the forward pass; job.model (what is saved) is unchanged
            self.model = torch.compile(job.model)

    def autocast(self) -> Any:
        return torch.autocast(self.dev, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def batch(self, batch: Batch, device: str) -> Batch:
        if self.dev == "cuda":
            batch.input = batch.input.pin_memory()
        batch = batch.to(device)
        if self.channels_last and batch.input.ndim == 4:
            batch.input = batch.input.contiguous(memory_format=torch.channels_last)
        return batch


def _train_epoch(job: FitJob, opt: torch.optim.Optimizer, sched: Any, params: list[nn.Parameter],
                 epoch: int, step: _Step) -> dict[str, Any]:
    job.model.train()
    job.methods.train()
    job.loader.set_epoch(epoch)  # the global epoch: data order never repeats across stages
    n_steps = len(job.loader)
    pre = job.methods.pretrain_epochs
    stage, stage_epoch, stage_epochs = ("pretrain", epoch, pre) if epoch < pre else \
        ("main", epoch - pre, job.train.epochs)
    meter = Meter(job.desc, job.out_dir, epoch, n_steps)
    with ExitStack() as stack:
        s_taps = stack.enter_context(FeatureTaps(job.model, job.methods.student_taps))
        t_taps = None
        if job.cache is None and job.teacher is not None and job.methods.teacher_taps:
            t_taps = stack.enter_context(FeatureTaps(getattr(job.teacher, "model", job.teacher),
                                                         job.methods.teacher_taps))
        bar = stack.enter_context(tqdm(total=n_steps, desc=f"{job.desc} {stage} {stage_epoch + 1}/{stage_epochs}",
                                       leave=False, disable=None, dynamic_ncols=True))
        for i, batch in enumerate(job.loader):
            batch = step.batch(batch, job.device)
            ctx = StepContext(epoch=stage_epoch, step=stage_epoch * n_steps + i, epochs=stage_epochs,
                              steps_per_epoch=n_steps, stage=stage)
            with step.autocast():
                s_out = _forward(step.model, batch, s_taps)
                t_out = _teacher_outputs(job, batch, t_taps)
            # the losses run in fp32 (outside autocast): tempered log-softmax is precision-sensitive
            out = job.methods(_fp32(s_out), _fp32(t_out), batch, ctx)
            opt.zero_grad(set_to_none=True)
            step.scaler.scale(out.loss).backward()
            if job.train.grad_clip:
                step.scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(params, job.train.grad_clip)
            step.scaler.step(opt)
            step.scaler.update()
            sched.step()
            meter.add(out.loss, out.terms, len(batch.target))
            bar.update(1)
            if (i + 1) % job.train.log_every == 0:
                bar.set_postfix_str(meter.flush(), refresh=False)
    meter.flush()
    stats = meter.summary(opt.param_groups[0]["lr"])
    stats.update(stage=stage, stage_epoch=stage_epoch + 1, stage_epochs=stage_epochs)
    return stats


def _teacher_outputs(job: FitJob, batch: Batch, taps: FeatureTaps | None) -> ModelOutput | None:
    if not job.methods.needs_teacher:
        return None
    if job.cache is not None:
        return job.cache.lookup(batch.index, batch.view)
    return _forward(job.teacher, batch, taps)


def _fp32(out: ModelOutput | None) -> ModelOutput | None:
    if out is None or out.logits.dtype == torch.float32:
        return out
    feats = {k: v.float() if v.is_floating_point() else v for k, v in out.feats.items()}
    return ModelOutput(out.logits.float(), feats, out.topk)


def _forward(model: nn.Module | None, batch: Batch, taps: FeatureTaps | None) -> ModelOutput:
    assert model is not None, "the methods need a teacher but none was given"
    logits = as_logits(model(batch.input))
    if taps is None:
        return ModelOutput(logits)
    feats = dict(taps.feats)
    taps.clear()
    return ModelOutput(logits, feats)


def _describe(desc: str, stats: dict[str, Any]) -> str:
    stage = "" if stats["stage"] == "main" else " (pre-training stage)"
    parts = [f"{desc} epoch {stats['stage_epoch']}/{stats['stage_epochs']}{stage}",
             f"loss {stats.get('loss', float('nan')):.4f}"]
    for key in ("val_top1", "test_top1"):
        if key in stats:
            parts.append(f"{key.split('_')[0]} {100 * stats[key]:.2f}%")
    parts.append(f"{stats['seconds']:.1f}s ({stats['samples_per_s']:.0f} samples/s)")
    return "  ".join(parts)

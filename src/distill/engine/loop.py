"""The one training loop: teacher training, scratch students and every distillation mode.

The engine never names a method: it asks the ``MethodSet`` what it needs (teacher outputs, taps), obtains
those outputs itself, and backprops the summed loss.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from distill.data.stream import head
from distill.engine import dist
from distill.engine.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from distill.engine.logs import EpochLog, describe_epoch
from distill.engine.meter import Meter, warn_collapse, warn_spikes
from distill.engine.optim import Group, build_optimizer, build_scheduler
from distill.engine.outputs import as_fp32, model_output
from distill.engine.scale import check_loss_scale
from distill.errors import DistillError
from distill.io import remove_stale_temps
from distill.methods.base import MethodSet
from distill.models import Keys, feed
from distill.recipe import TrainSpec
from distill.stages import resolve_auto_layers
from distill.taps import FeatureTaps
from distill.types import Batch, LossOutput, ModelOutput, SetupContext, StepContext

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
    inputs: Keys = None  # the fields of a dict input the model reads (the teacher's own are in FrozenTeacher)
    targets: Any = None  # several teachers combined by a strategy (see ``Targets``); replaces teacher/cache
    groups: list[Group] | None = None  # parameters with their own optimizer and schedule (a generator's)
    # a strategy's rewrite of each training batch before the forward (model, batch, ctx) -> batch: on-policy
    # distillation trains on the student's own samples; a rewritten batch with extras["live_teacher"] is scored
    # by the live teacher, never read from the cache (which holds the dataset's rows)
    rewrite: Callable[[nn.Module, Batch, StepContext], Batch] | None = None
    log: Callable[[str], None] = print
    history: list[dict[str, Any]] = field(default_factory=list)


def fit(job: FitJob) -> list[dict[str, Any]]:
    """Train ``job.model`` for ``job.train.epochs`` epochs, checkpointing each epoch; returns the history.

    Under torchrun (see ``distill.engine.dist``) every rank calls it with its own ``job.loader`` chunk; the
    student and the trainable method connectors train under DDP, ``job.evaluate`` must be the same collective
    on every rank, and only rank 0 writes checkpoints, logs and progress lines.
    """
    dist.require_group()
    job.log = dist.main_log(job.log)
    model = job.model.to(job.device)
    if job.teacher is not None:  # a replica on every rank's own device, eval mode, no DDP
        job.teacher.to(job.device)
    if job.targets is not None:
        job.targets.to(job.device)
    _setup_methods(job)
    methods = job.methods.to(job.device)
    params = list(model.parameters()) + list(methods.parameters())
    opt = build_optimizer(params, job.train.optimizer, job.groups)
    pre = methods.pretrain_epochs
    updates = -(-len(job.loader) // job.train.accumulate)  # optimizer steps per epoch
    sched = build_scheduler(opt, job.train.schedule, updates, job.train.epochs, pre, job.groups)
    start = _start(job, opt, sched)
    if job.train.channels_last:
        model.to(memory_format=torch.channels_last)
    step = _Step(job)
    check_loss_scale(job, step, resumed=start > 0)  # before the first step; sets `weight: auto` weights
    logger = dist.on_main(partial(EpochLog, job.out_dir))
    for epoch in range(start, pre + job.train.epochs):
        stats = _train_epoch(job, opt, sched, params, epoch, step)
        dist.sync_buffers(model)  # what every rank evaluates is what rank 0 saves
        if job.evaluate is not None:
            stats.update(job.evaluate(model))
        job.history.append(stats)
        dist.on_main(partial(_save_epoch, job, opt, sched, epoch + 1, logger))
        job.log(describe_epoch(job.desc, stats))
        warn_spikes(job.desc, job.train.grad_clip, stats, job.log)
        warn_collapse(job.desc, job.history, job.num_classes, job.log)
    if logger is not None:
        logger.close()
    opt.zero_grad(set_to_none=True)  # a trained model carries no stale gradients (and frees their memory)
    return job.history


def _save_epoch(job: FitJob, opt: torch.optim.Optimizer, sched: Any, epochs_done: int, logger: EpochLog) -> None:
    save_checkpoint(job.out_dir, model=job.model, methods=job.methods, optimizer=opt, scheduler=sched,
                    epoch=epochs_done, history=job.history, fingerprint=job.fingerprint)
    logger.write(job.history)


def _setup_methods(job: FitJob) -> None:
    classes = job.num_classes = job.num_classes or int(job.loader.ds.y.max()) + 1  # kept: warn_collapse reads it
    x = Batch(head(job.loader.ds, 2), torch.zeros(0), torch.zeros(0)).to(job.device).input
    setup_methods(job.methods, job.model, job.teacher, x, num_samples=len(job.loader.ds), num_classes=classes,
                  inputs=job.inputs, targets=job.targets)


def setup_methods(methods: MethodSet, model: nn.Module, teacher: nn.Module | None, x: Any, *,
                  num_samples: int, num_classes: int, inputs: Keys = None, targets: Any = None) -> None:
    """Dry-run student and teacher on a small batch ``x`` so methods build connectors from real tap shapes.
    ``targets``: several named teachers (``Targets``), probed for the taps of the methods naming each. Methods
    with ``layers: auto`` get their layers from both models' stages first (``distill.stages``)."""
    if methods.pending_layers():
        resolve_auto_layers(methods, model, teacher, x, inputs=inputs, targets=targets)
    s_shapes = _tap_shapes(model, model, methods.student_taps, x, inputs)
    t_shapes = {}
    if teacher is not None and methods.teacher_taps:
        t_shapes = teacher_tap_shapes(teacher, methods.teacher_taps, x)
    by_teacher = targets.tap_shapes(methods, x) if targets is not None else {}
    methods.setup(SetupContext(student_shapes=s_shapes, teacher_shapes=t_shapes, num_samples=num_samples,
                               num_classes=num_classes, by_teacher=by_teacher))


def teacher_tap_shapes(teacher: nn.Module, paths: list[str], x: Any) -> dict[str, tuple[int, ...]]:
    """Shapes of a (frozen) teacher's taps on ``x``; a FrozenTeacher's wrapped model carries the hooks."""
    return _tap_shapes(teacher, getattr(teacher, "model", teacher), paths, x, None)


def _tap_shapes(run: nn.Module, hooked: nn.Module, paths: list[str], x: Any,
                inputs: Keys) -> dict[str, tuple[int, ...]]:
    if not paths:
        return {}
    modes = [(m, m.training) for m in run.modules()]
    run.eval()  # no BatchNorm statistics updated by the dry run
    try:
        with FeatureTaps(hooked, paths) as taps, torch.no_grad():
            feed(run, x, inputs, "student")
            return {k: tuple(v.shape) for k, v in taps.feats.items()}
    finally:
        for m, mode in modes:
            m.training = mode


def _start(job: FitJob, opt: torch.optim.Optimizer, sched: Any) -> int:
    """Resume from the last complete checkpoint, or start fresh (clearing a stale one).

    Under torchrun every rank loads the checkpoint rank 0 wrote, RNG state included (the ranks' RNGs are
    identical: same seed, same draws), after agreeing that there is one and which epoch it ends.
    """
    dist.on_main(partial(remove_stale_temps, job.out_dir))  # for loops not started by train_role (Trainer, dropin)
    ckpt = find_checkpoint(job.out_dir) if job.resume else None
    dist.agree(ckpt is not None, f"{job.desc}: whether there is a checkpoint to resume from")
    if ckpt is not None:
        state = dist.everywhere(partial(load_checkpoint, ckpt, model=job.model, methods=job.methods, optimizer=opt,
                                        scheduler=sched, fingerprint=job.fingerprint))
        dist.agree(state.epoch, f"{job.desc}: the epoch to resume from")
        job.history = state.history
        job.log(f"{job.desc}: resumed from {ckpt} after epoch {state.epoch}")
        return state.epoch
    dist.on_main(partial(_clear_checkpoints, job.out_dir))
    torch.manual_seed(job.seed)  # dropout and other in-loop randomness replay from the seed
    return 0


def _clear_checkpoints(out_dir: Path) -> None:
    for name in ("checkpoint", "checkpoint.old", "checkpoint.tmp"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)


class _Trainable(nn.Module):
    """Student and methods as one module, for one DDP wrapper whose forward computes the loss itself: DDP finds
    the parameters a step leaves without gradient (FitNet's hint stage never uses the student's head) by walking
    back from what the forward returns, so that has to be the loss, not the student's logits."""

    def __init__(self, model: nn.Module, methods: MethodSet) -> None:
        super().__init__()
        self.model, self.methods = model, methods

    def forward(self, loss: Callable[[], LossOutput]) -> LossOutput:
        return loss()


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
        # Under torchrun, one DDP wrapper around the whole loss (_Trainable). Stages that leave parameters without
        # gradient (a pre-training stage, a paraphraser frozen for the main stage) need DDP's search for unused
        # ones. Buffers are not broadcast every step: CRD keeps its banks identical itself, and the student's
        # BatchNorm statistics are synced from rank 0 once per epoch (fit).
        staged = any(hasattr(m, "pretrain_epochs") for m in job.methods.methods) or \
            getattr(job.model, "leaves_parameters_unused", False)  # e.g. a generator idle on student-only steps
        self.trainable = dist.wrap(_Trainable(job.model, job.methods), find_unused=staged, broadcast_buffers=False)

    def loss(self, job: FitJob, batch: Batch, ctx: StepContext, s_taps: FeatureTaps,
             t_taps: FeatureTaps | None) -> LossOutput:
        """The loss of one batch; under torchrun computed inside DDP, which then all-reduces its gradients."""
        return self.trainable(partial(_loss, self, job, batch, ctx, s_taps, t_taps))

    def autocast(self) -> Any:
        return torch.autocast(self.dev, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def batch(self, batch: Batch, device: str) -> Batch:
        if self.dev == "cuda" and isinstance(batch.input, Tensor) and not batch.input.is_pinned():
            batch.input = batch.input.pin_memory()
        batch = batch.to(device)
        if self.channels_last and isinstance(batch.input, Tensor) and batch.input.ndim == 4:
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
    acc = job.train.accumulate
    share = job.loader.share if dist.world_size() > 1 else lambda _: 1.0
    with ExitStack() as stack:
        s_taps, t_taps = attach_taps(job, stack)
        bar = stack.enter_context(tqdm(total=n_steps, desc=f"{job.desc} {stage} {stage_epoch + 1}/{stage_epochs}",
                                       leave=False, disable=None, dynamic_ncols=True))
        for i, batch in enumerate(job.loader):
            batch = step.batch(batch, job.device)
            ctx = StepContext(epoch=stage_epoch, step=stage_epoch * n_steps + i, epochs=stage_epochs,
                              steps_per_epoch=n_steps, stage=stage)
            if job.rewrite is not None:
                batch = job.rewrite(job.model, batch, ctx)
            out = dist.weight_by_share(step.loss(job, batch, ctx, s_taps, t_taps), share(i))
            if i % acc == 0:
                opt.zero_grad(set_to_none=True)
            group = min(acc, n_steps - i // acc * acc)  # batches in this update (fewer at the epoch's end)
            step.scaler.scale(out.loss / group if group > 1 else out.loss).backward()
            if (i + 1) % acc == 0 or i + 1 == n_steps:  # accumulated `acc` batches (or the epoch's last ones)
                _update(job, step, opt, sched, params, meter)
            meter.add(out.loss, out.terms, len(batch.target) * dist.world_size())
            bar.update(1)
            if (i + 1) % job.train.log_every == 0:
                bar.set_postfix_str(meter.flush(), refresh=False)
    meter.flush()
    stats = meter.summary(opt.param_groups[0]["lr"])
    stats.update(stage=stage, stage_epoch=stage_epoch + 1, stage_epochs=stage_epochs)
    return stats


def _update(job: FitJob, step: _Step, opt: torch.optim.Optimizer, sched: Any, params: list[nn.Parameter],
            meter: Meter) -> None:
    """One optimizer step on the gradients accumulated since the last: clipped or measured, then applied."""
    if job.train.grad_clip:
        step.scaler.unscale_(opt)
        meter.add_grad_norm(nn.utils.clip_grad_norm_(params, job.train.grad_clip))
    elif not step.scaler.is_enabled():  # scaled AMP gradients: no true norm without a host sync
        meter.add_grad_norm(nn.utils.get_total_norm([p.grad for p in params if p.grad is not None]))
    step.scaler.step(opt)
    step.scaler.update()
    sched.step()


def attach_taps(job: FitJob, stack: ExitStack) -> tuple[FeatureTaps, FeatureTaps | None]:
    """Hook the taps the methods read onto the student and the live teacher (or teachers) for ``stack``'s life."""
    s_taps = stack.enter_context(FeatureTaps(job.model, job.methods.student_taps))
    t_taps = None
    if job.targets is not None:
        stack.enter_context(job.targets.attach())
    if job.cache is None and job.teacher is not None and job.methods.teacher_taps:
        t_taps = stack.enter_context(FeatureTaps(getattr(job.teacher, "model", job.teacher), job.methods.teacher_taps))
    return s_taps, t_taps


def _loss(step: _Step, job: FitJob, batch: Batch, ctx: StepContext, s_taps: FeatureTaps,
          t_taps: FeatureTaps | None) -> LossOutput:
    with step.autocast():
        s_out = model_output(step.model, batch, s_taps, job.inputs)
        t_out = _teacher_outputs(job, batch, t_taps)
    # the losses run in fp32 (outside autocast): tempered log-softmax is precision-sensitive
    return job.methods(as_fp32(s_out), as_fp32(t_out), batch, ctx)


def _teacher_outputs(job: FitJob, batch: Batch, taps: FeatureTaps | None) -> ModelOutput | None:
    if not job.methods.needs_teacher:
        return None
    if job.targets is not None:
        return job.targets(batch)
    if job.cache is not None and not batch.extras.get("live_teacher"):
        return job.cache.lookup(batch.index, batch.view)
    return model_output(job.teacher, batch, taps)

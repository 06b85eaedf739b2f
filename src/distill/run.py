"""Run a Plan: the teacher (if it has no weights), the scratch baseline (``compare``), the distilled student;
then evaluate all of them and write the report."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from torch import nn

from distill.cache import cached_eval_logits, prepare_cache
from distill.data import BatchLoader, DataSplits, head
from distill.data.loader import token_lengths
from distill.dry_run import dry_run
from distill.engine import FitJob, fit
from distill.engine.dist import (
    agree,
    check_global_batch,
    distributed,
    everywhere,
    local_device,
    main_log,
    on_main,
    rank,
    world_size,
)
from distill.engine.meter import chance_spans
from distill.engine.optim import Group
from distill.errors import DistillError
from distill.evaluate import model_metrics, predict
from distill.io import load_into, load_weights, read_json, remove_stale_temps, save_weights, write_json
from distill.lm_eval import lm_metrics
from distill.methods import MethodSet
from distill.methods.ce import CE
from distill.models import Keys
from distill.plan import Plan, TeacherPart, fingerprint, plan_from_recipe
from distill.probe import embed, probes
from distill.recipe import Recipe, TrainSpec
from distill.report import write_report
from distill.robustness import robustness_metrics
from distill.run_eval import describe_data, epoch_eval, epoch_top1  # noqa: F401  (re-exported)

Log = Callable[[str], None]


@dataclass
class Trained:
    """A trained (or loaded) model of a run. ``frozen``: the wrapper it is evaluated through (a teacher's
    FrozenTeacher, with its own preprocessing); ``inputs``: the keys of a dict input it reads."""

    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    weights: Path | None = None
    frozen: nn.Module | None = None
    inputs: Keys = None


@dataclass
class Outcome:
    """A finished run: the report, every trained model by role and their test metrics."""

    report: Path
    trained: dict[str, Trained]
    metrics: dict[str, dict[str, Any]]


def run(recipe: Recipe, *, resume: bool = False, log: Log = print) -> Path:
    """Train and compare teacher / scratch / distilled student; returns the path of ``report.md``.

    Under ``torchrun`` every process calls it: they train data-parallel (``distill.engine.dist``), rank 0
    alone writes files and logs, and every rank returns once the report is written.
    """
    with distributed(recipe.device):
        return execute(plan_from_recipe(recipe), resume=resume, log=main_log(log)).report


def execute(plan: Plan, *, resume: bool = False, log: Log = print) -> Outcome:
    """Train a Plan with its strategy (``plan.strategy``; default ``offline``: the teacher when it has no
    weights, the scratch baseline when ``compare``, the distilled student), then evaluate every trained model
    and write the report. The one runner behind recipes and ``distill.fit``."""
    from distill.strategies import build_strategy

    strategy = plan.strategy if plan.strategy is not None else build_strategy("offline")
    on_main(partial(remove_stale_temps, plan.out))  # the report's and recipe's temporary files after a kill
    started = time.perf_counter()
    roles = dry_run(plan, strategy)  # whatever would fail when a role starts fails now, before any training
    if resume:
        everywhere(partial(check_resumable, plan.out, roles))
    log(f"dry run: {len(roles)} role(s) built and stepped once on a few samples "
        f"({time.perf_counter() - started:.1f}s)")
    return strategy.run(plan, resume=resume, log=log)


def check_resumable(out: Path, roles: list[tuple[str, str]]) -> None:
    """Refuse ``--resume`` before anything trains (and before anything on disk changes) when a role's finished
    record or checkpoint under ``out`` was written by a different recipe."""
    for role, fp in roles:
        folder = out / role
        for record in (folder / "model.json", *(folder / c / "meta.json" for c in ("checkpoint", "checkpoint.old"))):
            if not record.is_file():
                continue
            meta = read_json(record, f"{role}'s record", f"delete {record.parent} to train {role} again")
            if meta.get("fingerprint") != fp:
                raise DistillError(f"{record.parent} was written by a different recipe ({role} changed); --resume "
                                   f"needs the same recipe: delete {folder} to train {role} anew, or run without "
                                   "--resume or with another output_dir")


def train_scratch(plan: Plan, model: nn.Module, *, role: str = "scratch", resume: bool, log: Log,
                  inputs: Keys = None, notes: list[str] | None = None) -> Trained:
    """The scratch baseline of ``model`` (trained in place): cross-entropy on the labelled samples only, for the
    same number of optimizer steps as a student that sees the whole training split. With no label at all
    (``labels_per_class: 0``) it is the untrained initial model: what the student would be without a teacher."""
    labelled, steps = training_split(plan.data, labelled_only=True)
    if len(labelled) == 0:
        if notes is not None:
            notes.append(f"{role} student: no labels (labels_per_class: 0), so it is the untrained initial student")
        return Trained(model, inputs=inputs)
    trained = train_role(role, plan, model, MethodSet([CE()]), plan.train, labelled, resume=resume, log=log,
                         epoch_size=steps, inputs=inputs)
    if notes is not None:
        notes.append(f"{role} student: trained on the {len(labelled)} labelled samples only, "
                     f"for the same number of optimizer steps as the distilled student")
    return trained


def training_split(data: DataSplits, labelled_only: bool) -> tuple[Any, int | None]:
    """(dataset, epoch_size) a student trains on: the whole training split, or its labelled samples alone cycled
    for as many samples per epoch as the whole split (the scratch baseline's batches)."""
    return (data.labelled_train(), len(data.train)) if labelled_only else (data.train, None)


def finish(plan: Plan, trained: dict[str, Trained], reference: nn.Module | None, notes: list[str],
           log: Log, roles: dict[str, str] | None = None) -> Outcome:
    """Evaluate every trained model (rank 0 alone: latency timings undisturbed by other ranks) and write the
    report; ``reference``: the (frozen) model whose predictions the agreement column compares with; ``roles``:
    the rows the report's summary compares as teacher / scratch / student, when not named so."""
    metrics = on_main(partial(_evaluate_and_write, plan, trained, reference, notes, log, roles))
    return Outcome(plan.out / "report.md", trained, metrics or {})


def obtain_teacher(plan: Plan, *, resume: bool, log: Log, part: TeacherPart | None = None,
                   role: str = "teacher") -> Trained:
    """The teacher with its weights (``part``, default the plan's teacher): loaded, or trained here with
    cross-entropy into ``<output_dir>/<role>/``.

    A teacher trained here sees every label of the training split: ``labels_per_class`` is the student's
    budget (Hinton's transfer-set setting), not the teacher's.
    """
    part = plan.teacher if part is None else part
    if part is None:
        return Trained(nn.Identity())
    if part.train is None:
        if part.weights is not None:
            log(f"{role}: loaded {part.weights}")
        return Trained(part.model, weights=part.weights)
    return train_role(role, plan, part.model, MethodSet([CE()]), part.train, plan.data.teacher_train(),
                      resume=resume, log=log, inputs=part.inputs)


def finished_teacher(plan: Plan, role: str = "teacher") -> Trained | None:
    """The plan's teacher as trained by an earlier run into ``<output_dir>/<role>/`` (weights loaded into the
    plan's teacher), or None when no finished teacher of this recipe is there. Never trains."""
    assert plan.teacher is not None
    return _finished(plan.out / role, fingerprint(plan.identity, role), plan.teacher.model, plan.teacher.inputs)


def train_student(plan: Plan, teacher: nn.Module | None, *, resume: bool = False, log: Log = print,
                  notes: list[str] | None = None, role: str = "student", model: nn.Module | None = None,
                  methods: MethodSet | None = None, cache_plan: Plan | None = None,
                  labelled_only: bool = False, rewrite: Any = None) -> Trained:
    """The distilled student (``model``, default the plan's) from ``teacher``, read from the teacher cache when
    its methods allow it (see ``distill.cache.plan``; ``cache_plan``: the plan whose cache settings and
    location apply, default ``plan``). ``labelled_only``: train on the labelled samples alone, batch for batch what
    the scratch student sees, instead of the whole training split. ``rewrite``: a strategy's rewrite of each
    training batch (``FitJob.rewrite``)."""
    methods = plan.methods if methods is None else methods
    cache = prepare_cache(replace(cache_plan or plan, methods=methods), teacher, log=log)
    if notes is not None and cache is not None:
        notes.append(f"teacher outputs read from the cache {cache.path} (top-{cache.k} of {cache.num_classes} "
                     f"logits, {cache.views} view(s)); the teacher ran once, not every epoch")
    views = cache.views if cache is not None else plan.cache.views
    ds, size = training_split(plan.data, labelled_only)
    return train_role(role, plan, plan.student if model is None else model, methods, plan.train, ds,
                      teacher=teacher, cache=cache, resume=resume, log=log, views=views, inputs=plan.student_inputs,
                      epoch_size=size, rewrite=rewrite)


def train_role(role: str, plan: Plan, model: nn.Module, methods: MethodSet, train: TrainSpec, ds: Any, *,
               teacher: nn.Module | None = None, cache: Any = None, resume: bool = False, log: Log = print,
               epoch_size: int | None = None, views: int | None = None, inputs: Keys = None,
               targets: Any = None, evaluate: Any = None, groups: list[Group] | None = None,
               rewrite: Any = None) -> Trained:
    """Train one role into ``<output_dir>/<role>/`` (or pick up its finished result when resuming).

    Training batches carry the plan's augmentation (``views``: cycle through that many augmented views
    instead of a fresh one each epoch); per-epoch evaluation never augments. ``inputs``: the keys of a dict
    input the model reads. ``targets``: several teachers combined (``distill.engine.loop.FitJob.targets``);
    ``evaluate``: the per-epoch evaluation (default: top-1 on val and test); ``groups``: parameters with their
    own optimizer and schedule (``distill.engine.optim.Group``).
    """
    check_global_batch(plan.batch_size)
    out = plan.out / role
    fp = fingerprint(plan.identity, role)
    if plan.dry_run is not None:  # a dry run's miniature: one epoch per stage, and the role recorded
        plan.dry_run.append((role, fp))
        train = train.model_copy(update={"epochs": 1})
        for method in methods.methods:
            if getattr(method, "pretrain_epochs", 0) > 1:
                method.pretrain_epochs = 1
    on_main(partial(remove_stale_temps, out))  # what a kill -9 left half-written; nothing reads it
    if resume:  # refused before anything in the role's folder changes
        everywhere(partial(check_resumable, plan.out, [(role, fp)]))
    done = everywhere(partial(_finished, out, fp, model, inputs)) if resume else None
    agree(done is not None, f"whether {role} is already complete in {out}")
    if done is not None:
        log(f"{role}: already complete in {out}")
        return done
    on_main(partial((out / "model.json").unlink, missing_ok=True))
    device = local_device(plan.device)
    loader = BatchLoader(ds, plan.batch_size, shuffle=True, seed=plan.seed, epoch_size=epoch_size,
                         augment=plan.augment, views=views, rank=rank(), world=world_size(),
                         pin_memory=device.startswith("cuda"),
                         lengths=token_lengths(ds) if plan.group_by_length else None,
                         labelled_per_batch=plan.labelled_per_batch)
    evaluate = evaluate or epoch_eval(plan.data, plan.eval_batch_size, inputs)
    if plan.epoch_hook is not None and plan.dry_run is None:
        evaluate = _hooked(evaluate, partial(plan.epoch_hook, role))
    job = FitJob(model=model, methods=methods, loader=loader, train=train, out_dir=out, seed=plan.seed,
                 fingerprint=fp, teacher=teacher, cache=cache, resume=resume, device=device, desc=role, log=log,
                 evaluate=evaluate,
                 num_classes=plan.data.num_classes, inputs=inputs, targets=targets, groups=groups, rewrite=rewrite)
    history = fit(job)
    on_main(partial(_save_role, out, role, fp, model, history))
    return Trained(model, history, out / "model.safetensors", inputs=inputs)


def _hooked(evaluate: Any, hook: Callable[[int, dict[str, float]], None]) -> Any:
    """``evaluate`` that also hands each epoch's metrics, with the epoch's index, to ``hook``."""
    epochs = iter(range(1 << 30))

    def run(model: nn.Module) -> dict[str, float]:
        metrics = evaluate(model)
        hook(next(epochs), metrics)
        return metrics
    return run


def _save_role(out: Path, role: str, fp: str, model: nn.Module, history: list[dict[str, Any]]) -> None:
    save_weights(out / "model.safetensors", model.state_dict())
    # model.json is written last: its presence marks the role as complete for --resume.
    write_json(out / "model.json", {"role": role, "fingerprint": fp, "complete": True, "history": history})


def _finished(out: Path, fp: str, model: nn.Module, inputs: Keys = None) -> Trained | None:
    meta_path, weights = out / "model.json", out / "model.safetensors"
    if not (meta_path.is_file() and weights.is_file()):
        return None
    meta = read_json(meta_path, "a finished role's record", f"delete {out} to train that role again")
    if meta.get("fingerprint") != fp or not meta.get("complete"):
        return None
    load_into(model, load_weights(weights), str(weights))
    return Trained(model, list(meta["history"]), weights, inputs=inputs)


def diagnose(methods: MethodSet, teacher: nn.Module | None, data: DataSplits, log: Log,
             plan: Plan | None = None) -> list[str]:
    """Warnings about the methods' settings for this teacher on 1,024 of its logits (logged): the test logits
    stored in the plan's teacher cache when there is one (the teacher does not run again), else a sample of
    the training split."""
    if teacher is None or data.tokens:  # the checks read (N, C) class logits
        return []
    cached = cached_eval_logits(plan, teacher, "test") if plan is not None else None
    logits = cached[:1024] if cached is not None else predict(teacher, head(data.train, 1024))
    warnings = methods.diagnose(logits)
    for w in warnings:
        log(f"warning: {w}")
    return warnings


def _metrics(plan: Plan, trained: dict[str, Trained], teacher: nn.Module | None) -> dict[str, dict[str, Any]]:
    """Test metrics of every trained role (the teacher through its frozen wrapper)."""
    if plan.data.tokens:
        return lm_metrics(plan, trained, teacher)
    test, bs = plan.data.test, plan.eval_batch_size
    t_logits = None if teacher is None else cached_eval_logits(plan, teacher, "test")  # the teacher ran once
    if teacher is not None and t_logits is None:
        t_logits = predict(teacher, test, bs)
    t_path = (plan.embeddings or {}).get("teacher")
    ref = embed(teacher, t_path, test, batch_size=bs) if teacher is not None and t_path else None
    models: dict[str, dict] = {}
    for role, t in trained.items():
        model, keys = (t.frozen, None) if t.frozen is not None else (t.model, t.inputs)
        metrics = model_metrics(model, test, test.y, num_classes=plan.data.num_classes, inputs=keys,
                                teacher_logits=t_logits, weights_path=t.weights, history=_main_stage(t.history),
                                latency=plan.latency, logits=t_logits if model is teacher else None)
        metrics["params"] = sum(p.numel() for p in t.model.parameters())
        path = (plan.embeddings or {}).get("teacher" if role.startswith("teacher") else "student")
        if path is not None:  # evaluation only: the probes fit on the training split's true labels
            metrics.update(probes(model, path, plan.data, inputs=keys, batch_size=bs,
                                  reference=None if role.startswith("teacher") else ref))
        models[role] = metrics
    if plan.robustness is not None:  # eval.robustness: each model attacked through its own gradients
        for role, robust in robustness_metrics(plan.robustness, plan.data, trained, batch_size=bs,
                                               seed=plan.seed).items():
            models[role].update(robust)
    return models


def _evaluate_and_write(plan: Plan, trained: dict[str, Trained], teacher: nn.Module | None, notes: list[str],
                        log: Log, roles: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    models = _metrics(plan, trained, teacher)
    described = plan.recipe.model_dump(mode="json") if plan.recipe is not None else {"python": plan.identity}
    notes = notes + collapse_notes(trained, plan.data.num_classes)
    path = write_report(plan.out, models=models, histories={r: t.history for r, t in trained.items()},
                        recipe=described, seed=plan.seed, title=plan.name, notes=notes, roles=roles,
                        figures=plan.dry_run is None)  # a dry run skips the plots: most of its time otherwise
    log(f"report: {path}")
    return models


def collapse_notes(trained: dict[str, Trained], num_classes: int) -> list[str]:
    """A report note per role whose validation top-1 sat at chance for a span of epochs (its log warned)."""
    return [f"{role}: validation top-1 at chance (1/{num_classes}) in epochs {a}-{b}: the model collapsed there "
            "(a gradient blow-up; see the run's log for the fix)"
            for role, t in trained.items() for a, b in chance_spans(t.history, num_classes)]


def _main_stage(history: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Epochs of the main stage only: a pre-training stage's epochs never count as the best epoch."""
    return [h for h in history if h.get("stage", "main") == "main"] or None

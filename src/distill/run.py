"""Run what a recipe asks for: the teacher (if it has no weights), the scratch baseline (``compare: true``),
the distilled student; then evaluate all of them and write the report."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from distill.build import (
    build_arch,
    build_augment,
    build_methods,
    check_classes,
    fingerprint,
    frozen_teacher,
    load_data,
    load_model_weights,
)
from distill.cache import prepare_cache
from distill.data import ArrayDataset, BatchLoader, DataSplits
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
    sum_across_ranks,
    world_size,
)
from distill.evaluate import model_metrics, predict, topk_accuracy
from distill.io import load_into, load_weights, save_weights, write_json
from distill.methods import MethodSet
from distill.methods.ce import CE
from distill.recipe import Recipe, TrainSpec
from distill.report import write_report

Log = Callable[[str], None]


@dataclass
class Trained:
    model: nn.Module
    history: list[dict[str, Any]] = field(default_factory=list)
    weights: Path | None = None


def run(recipe: Recipe, *, resume: bool = False, log: Log = print) -> Path:
    """Train and compare teacher / scratch / distilled student; returns the path of ``report.md``.

    Under ``torchrun`` every process calls it: they train data-parallel (``distill.engine.dist``), rank 0
    alone writes files and logs, and every rank returns once the report is written.
    """
    with distributed(recipe.device):
        return _run(recipe, resume=resume, log=main_log(log))


def _run(recipe: Recipe, *, resume: bool, log: Log) -> Path:
    data = load_data(recipe)
    log(_describe_data(data))
    teacher = obtain_teacher(recipe, data, resume=resume, log=log)
    frozen = frozen_teacher(teacher.model, recipe.teacher, data) if recipe.teacher else None
    student_model = build_arch(recipe.student, data, recipe.seed)
    check_classes(data, **({"teacher": frozen} if frozen else {}), student=student_model)
    methods = build_methods(recipe)
    notes = _diagnose(methods, frozen, data, log)
    trained: dict[str, Trained] = {}
    if frozen is not None:
        trained["teacher"] = teacher
    if recipe.compare:
        scratch = build_arch(recipe.student, data, recipe.seed)  # same initial weights as the student
        trained["scratch"] = train_role("scratch", recipe, data, scratch, MethodSet([CE()]), recipe.train,
                                        data.labelled_train(), resume=resume, log=log,
                                        epoch_size=len(data.train))
        notes.append(f"scratch student: trained on the {len(data.labelled_train())} labelled samples only, "
                     f"for the same number of optimizer steps as the distilled student")
    trained["student"] = train_student(recipe, data, student_model, methods, frozen, resume=resume, log=log,
                                       notes=notes)
    on_main(partial(_report, recipe, data, trained, frozen, notes, log))
    return recipe.out / "report.md"


def obtain_teacher(recipe: Recipe, data: DataSplits, *, resume: bool, log: Log) -> Trained:
    """Load the teacher's weights, or train it here with cross-entropy.

    A teacher trained here sees every label of the training split: ``labels_per_class`` is the student's
    budget (Hinton's transfer-set setting), not the teacher's.
    """
    spec = recipe.teacher
    if spec is None:
        return Trained(nn.Identity())
    model = build_arch(spec, data, recipe.seed)
    if spec.weights:
        path = load_model_weights(model, spec.weights, "teacher")
        log(f"teacher: loaded {path}")
        return Trained(model, weights=path)
    full = load_data(recipe, label_budget=False) if recipe.data.labels_per_class else data
    return train_role("teacher", recipe, full, model, MethodSet([CE()]), spec.train or recipe.train,
                      full.train, resume=resume, log=log)


def train_student(recipe: Recipe, data: DataSplits, model: nn.Module, methods: MethodSet,
                  teacher: nn.Module | None, *, resume: bool = False, log: Log = print,
                  notes: list[str] | None = None) -> Trained:
    """The distilled student, from the teacher cache when its methods allow it (see ``distill.cache.plan``)."""
    cache = prepare_cache(recipe, data, teacher, methods, augment=build_augment(recipe), log=log)
    if notes is not None and cache is not None:
        notes.append(f"teacher outputs read from the cache {cache.path} (top-{cache.k} of {cache.num_classes} "
                     f"logits, {cache.views} view(s)); the teacher ran once, not every epoch")
    views = cache.views if cache is not None else recipe.cache.views
    return train_role("student", recipe, data, model, methods, recipe.train, data.train, teacher=teacher,
                      cache=cache, resume=resume, log=log, views=views)


def train_role(role: str, recipe: Recipe, data: DataSplits, model: nn.Module, methods: MethodSet,
               train: TrainSpec, ds: ArrayDataset, *, teacher: nn.Module | None = None, cache: Any = None,
               resume: bool = False, log: Log = print, epoch_size: int | None = None,
               views: int | None = None) -> Trained:
    """Train one role into ``<output_dir>/<role>/`` (or pick up its finished result when resuming).

    Training batches carry the recipe's ``data.augment`` (``views``: cycle through that many augmented views
    instead of a fresh one each epoch); per-epoch evaluation never augments.
    """
    check_global_batch(recipe.data.batch_size)
    out = recipe.out / role
    fp = fingerprint(recipe, role)
    done = everywhere(partial(_finished, out, fp, model)) if resume else None
    agree(done is not None, f"whether {role} is already complete in {out}")
    if done is not None:
        log(f"{role}: already complete in {out}")
        return done
    on_main(partial((out / "model.json").unlink, missing_ok=True))
    loader = BatchLoader(ds, recipe.data.batch_size, shuffle=True, seed=recipe.seed, epoch_size=epoch_size,
                         augment=build_augment(recipe), views=views, rank=rank(), world=world_size())
    job = FitJob(model=model, methods=methods, loader=loader, train=train, out_dir=out, seed=recipe.seed,
                 fingerprint=fp, teacher=teacher, cache=cache, evaluate=_epoch_eval(data, recipe.data.eval_batch_size),
                 resume=resume, device=local_device(recipe.device), desc=role, log=log, num_classes=data.num_classes)
    history = fit(job)
    on_main(partial(_save_role, out, role, fp, model, history))
    return Trained(model, history, out / "model.safetensors")


def _save_role(out: Path, role: str, fp: str, model: nn.Module, history: list[dict[str, Any]]) -> None:
    save_weights(out / "model.safetensors", model.state_dict())
    # model.json is written last: its presence marks the role as complete for --resume.
    write_json(out / "model.json", {"role": role, "fingerprint": fp, "complete": True, "history": history})


def _finished(out: Path, fp: str, model: nn.Module) -> Trained | None:
    meta_path, weights = out / "model.json", out / "model.safetensors"
    if not (meta_path.is_file() and weights.is_file()):
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("fingerprint") != fp or not meta.get("complete"):
        return None
    load_into(model, load_weights(weights), str(weights))
    return Trained(model, list(meta["history"]), weights)


def _epoch_eval(data: DataSplits, batch_size: int) -> Callable[[nn.Module], dict[str, float]]:
    def evaluate(model: nn.Module) -> dict[str, float]:
        return {"val_top1": _top1(model, data.val, batch_size), "test_top1": _top1(model, data.test, batch_size)}
    return evaluate


def _top1(model: nn.Module, split: ArrayDataset, batch_size: int) -> float:
    """Top-1 accuracy on ``split``. Under torchrun each rank predicts its own contiguous share and the correct
    counts are summed: every rank gets the same number, and none waits while another evaluates everything."""
    if world_size() == 1:
        return topk_accuracy(predict(model, split.x, batch_size), split.y)
    per = -(-len(split) // world_size())  # ceil: the last ranks may get fewer (or no) rows
    lo, hi = min(len(split), rank() * per), min(len(split), (rank() + 1) * per)
    correct = int((predict(model, split.x[lo:hi], batch_size).argmax(dim=1) == split.y[lo:hi]).sum()) if hi > lo else 0
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")  # nccl reduces device tensors
    counts = sum_across_ranks(torch.tensor([correct, hi - lo], dtype=torch.float64, device=device))
    return float(counts[0] / counts[1])


def _diagnose(methods: MethodSet, teacher: nn.Module | None, data: DataSplits, log: Log) -> list[str]:
    if teacher is None:
        return []
    warnings = methods.diagnose(predict(teacher, data.train.x[:1024]))
    for w in warnings:
        log(f"warning: {w}")
    return warnings


def _report(recipe: Recipe, data: DataSplits, trained: dict[str, Trained], teacher: nn.Module | None,
            notes: list[str], log: Log) -> Path:
    bs = recipe.data.eval_batch_size
    t_logits: Tensor | None = predict(teacher, data.test.x, bs) if teacher is not None else None
    models: dict[str, dict] = {}
    for role, t in trained.items():
        model = teacher if role == "teacher" else t.model
        metrics = model_metrics(model, data.test.x, data.test.y, num_classes=data.num_classes,
                                teacher_logits=t_logits, weights_path=t.weights,
                                history=_main_stage(t.history), latency=recipe.eval.latency)
        metrics["params"] = sum(p.numel() for p in t.model.parameters())
        models[role] = metrics
    path = write_report(recipe.out, models=models, histories={r: t.history for r, t in trained.items()},
                        recipe=recipe.model_dump(mode="json"), seed=recipe.seed, title=recipe.name, notes=notes)
    log(f"report: {path}")
    return path


def _main_stage(history: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """Epochs of the main stage only: a pre-training stage's epochs never count as the best epoch."""
    return [h for h in history if h.get("stage", "main") == "main"] or None


def _describe_data(data: DataSplits) -> str:
    labelled = len(data.labelled_train())
    return (f"data: {data.name} train {len(data.train)} ({labelled} labelled) / val {len(data.val)} / "
            f"test {len(data.test)}, {data.num_classes} classes, input {tuple(data.input_shape)}")

"""``distill.fit``: the Python door to the same Plan a recipe builds.

Teacher and student may be ``nn.Module`` objects, zoo names or spec dicts (``{"name": "resnet8", "weights": ...}``);
data may be Datasets, DataLoaders that do not shuffle, ``(x, y)`` tensors or a registered dataset name; methods
may be objects, names or dicts. When every part is nameable the run *is* a recipe: ``result.recipe`` is its
YAML (also written to ``<output_dir>/recipe.yaml``), replayable with ``distill run``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from distill.cache.build import dataset_hash, hash_tensors
from distill.data import DataSplits, build_data, python_data
from distill.data.augment import Augment
from distill.engine.dist import check_device, distributed, main_log, on_main
from distill.errors import DistillError, error_boundary
from distill.io import check_output_dir, write_text
from distill.methods import METHODS, Method, MethodSet
from distill.plan import Peer, Plan, TeacherPart, plan_from_recipe, teacher_part
from distill.pruned import initialised
from distill.recipe import (
    AugmentSpec,
    CacheSpec,
    EvalSpec,
    MethodSpec,
    ModelSpec,
    NormSpec,
    StrategySpec,
    TrainSpec,
    _cache_shorthand,
    recipe_from_dict,
    validate_part,
)
from distill.run import Outcome, execute
from distill.spec_check import check_kwargs, check_method_numbers
from distill.strategies import STRATEGIES, Strategy, build_strategy

Part = nn.Module | str | dict[str, Any]


@dataclass
class FitResult:
    """What ``fit`` returns: the trained student (the very module you passed, trained in place), every trained
    role, their test metrics by role, the report, and the equivalent recipe YAML when there is one."""

    student: nn.Module
    models: dict[str, nn.Module]
    metrics: dict[str, dict[str, Any]]
    report_path: Path
    recipe: str | None
    history: list[dict[str, Any]]


@error_boundary
def fit(teacher: Part | None = None, student: Part | None = None, train: Any = None, val: Any = None,
        test: Any = None, *, methods: Sequence[Method | str | dict[str, Any]] = ("kd",), epochs: int | None = None,
        training: TrainSpec | dict[str, Any] | None = None, output_dir: str | Path | None = None,
        name: str = "fit", seed: int = 0, device: str = "cpu", batch_size: int = 128,
        eval_batch_size: int | None = None,
        labels_per_class: int | None = None, num_classes: int | None = None, normalize: Any = None,
        augment: dict[str, Any] | None = None, workers: int | None = None, labelled_per_batch: int | None = None,
        cache: str | dict[str, Any] = "auto",
        compare: bool = True, latency: bool = True, teacher_inputs: Any = None, student_inputs: Any = None,
        teacher_normalize: Any = None, strategy: str | dict[str, Any] = "offline",
        teachers: dict[str, Part] | None = None, peers: dict[str, Part] | None = None, resume: bool = False,
        robustness: bool | dict[str, Any] | None = None, log: Callable[[str], None] = print) -> FitResult:
    """Distil ``teacher`` into ``student`` on ``train`` and write the report; see the module doc for the forms
    each argument takes. ``training`` is a recipe's ``train`` section (optimizer, schedule, precision, ...);
    ``epochs`` overrides its epochs. ``val``/``test`` missing: split off train (10% each, stratified).
    ``strategy``: who teaches whom (``"offline"``, ``"multi_teacher"``, ``"mutual"``, ``"born_again"``, or a dict
    with its arguments, e.g. ``{"name": "born_again", "generations": 2}``); ``teachers``: several named teachers
    (multi_teacher); ``peers``: named students trained beside ``student`` (mutual); ``robustness``: a recipe's
    ``eval.robustness`` (``True`` for its defaults, or ``{"eps": 0.1, "steps": 10, ...}``): FGSM and PGD top-1 of
    every model in the report; ``labelled_per_batch``: a recipe's ``data.labelled_per_batch`` (that many labelled
    samples in every training batch of a split with a label budget).

    A teacher module is taken as pretrained; a zoo teacher without ``weights`` is trained here first, as in a
    recipe. Data given as Datasets or tensors is used as given (no normalisation). Raises ``DistillError``
    with one line for any bad input, before training starts.
    """
    if student is None or train is None:
        raise DistillError("fit: give at least student= and train=")
    spec = _training(training, epochs)
    method_list = _methods(methods)
    raw = _raw_recipe(teacher, student, train, method_list, spec, locals())
    if raw is not None:
        recipe = recipe_from_dict(raw, source="fit")
        text = yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=True), sort_keys=False)
        with distributed(device):
            outcome = execute(plan_from_recipe(recipe), resume=resume, log=main_log(log))
            on_main(partial(write_text, recipe.out / "recipe.yaml", text))  # rank 0 alone writes, as for the run
        return _result(outcome, text)
    strat = _strategy(strategy, teacher, teachers, peers, method_list)
    check_device(device)  # the recipe door (above) checks both in plan_from_recipe
    out = Path(output_dir or f"runs/{name}")
    check_output_dir(out)
    robust = validate_part(EvalSpec, {"robustness": robustness}, "eval").robustness
    with distributed(device):
        data = _data(train, val, test, seed, num_classes, labels_per_class, normalize, workers)
        plan = Plan(name=name, seed=seed, out=out, device=device, data=data,
                    student=_student(student, data, seed, student_inputs), methods=_method_set(method_list),
                    train=spec, teacher=_teacher(teacher, data, seed, spec, teacher_inputs, teacher_normalize),
                    student_inputs=student_inputs, batch_size=batch_size, eval_batch_size=eval_batch_size,
                    cache=validate_part(CacheSpec, _cache_shorthand(cache), "cache"),
                    augment=_augment(augment), compare=compare, latency=latency, strategy=strat,
                    robustness=robust, labelled_per_batch=labelled_per_batch or 0)
        plan.teachers = {n: _teacher(t, data, seed, spec, None, None) for n, t in (teachers or {}).items()}
        plan.peers = {n: Peer(_student(p, data, seed + i, None)) for i, (n, p) in enumerate((peers or {}).items(), 1)}
        plan.fresh_student = None if isinstance(student, nn.Module) else \
            (lambda s: _student(student, data, s, student_inputs))
        plan.identity = _identity(plan, method_list)
        return _result(execute(plan, resume=resume, log=main_log(log)), None)


def _strategy(strategy: Any, teacher: Any, teachers: Any, peers: Any, methods: list) -> Strategy:
    """The strategy of a Python run, checked as a recipe's would be (one DistillError line)."""
    spec = validate_part(StrategySpec, {"name": strategy} if isinstance(strategy, str) else strategy, "strategy")
    check_kwargs(STRATEGIES.get(spec.name), spec.kwargs, "strategy", f"strategy '{spec.name}'")
    built = build_strategy(spec.name, spec.kwargs)
    built.check_parts(teacher=teacher is not None, teachers=list(teachers or {}), peers=list(peers or {}),
                      methods=[(type(m).__name__.lower(), m.needs, m.teacher_key) for m, _, _ in methods])
    return built


def _training(training: TrainSpec | dict[str, Any] | None, epochs: int | None) -> TrainSpec:
    raw = training.model_dump() if isinstance(training, TrainSpec) else dict(training or {})
    if epochs is not None:
        raw["epochs"] = epochs
    return validate_part(TrainSpec, raw, "training")


def _methods(methods: Any) -> list[tuple[Method, float, dict[str, Any] | None]]:
    """(method object, weight, recipe entry or None) for each of ``methods``."""
    if isinstance(methods, (str, dict, Method)):
        methods = [methods]
    out = []
    for i, m in enumerate(methods):
        if isinstance(m, Method):
            out.append((m, 1.0, m.spec()))
            continue
        entry = {"name": m} if isinstance(m, str) else dict(m) if isinstance(m, dict) else None
        if entry is None:
            raise DistillError(f"fit: methods[{i}] is a {type(m).__name__}: give a Method, a name or a dict")
        ms = validate_part(MethodSpec, entry, f"methods.{i}")
        check_kwargs(METHODS.get(ms.name), ms.kwargs, f"methods.{i}", f"method '{ms.name}'")
        check_method_numbers(ms.kwargs, ms.weight, f"methods.{i}", f"method '{ms.name}'", ms.allow_negative)
        method = METHODS.get(ms.name)(**ms.kwargs)
        method.teacher_key = ms.teacher
        out.append((method, ms.weight, entry))
    if not out:
        raise DistillError("fit: methods is empty; give at least one (e.g. 'kd')")
    return out


def _method_set(methods: list[tuple[Method, float, dict[str, Any] | None]]) -> MethodSet:
    return MethodSet([m for m, _, _ in methods], [w for _, w, _ in methods])


def _named(part: Any) -> dict[str, Any] | None:
    """A model or data part as a recipe section, or None when it is a Python object."""
    return {"name": part} if isinstance(part, str) else dict(part) if isinstance(part, dict) else None


def _raw_recipe(teacher: Any, student: Any, train: Any, methods: list, spec: TrainSpec,
                args: dict[str, Any]) -> dict[str, Any] | None:
    """The equivalent recipe as a raw dict, when every part has a name (else None)."""
    data, entries = _named(train), [e for _, _, e in methods]
    t, s = (_named(teacher) if teacher is not None else None), _named(student)
    if (teacher is not None and t is None) or s is None or data is None or "train" in data or None in entries:
        return None
    if args["val"] is not None or args["test"] is not None:
        raise DistillError("fit: a registered dataset brings its own val/test splits; do not pass val=/test=")
    for key, side in (("teacher_inputs", t), ("student_inputs", s)):
        if args[key] is not None and side is not None:
            side.setdefault("inputs", args[key])
    if args["teacher_normalize"] is not None and t is not None:
        t.setdefault("normalize", _norm_dict(args["teacher_normalize"]))
    data.update({k: args[k] for k in ("labels_per_class", "batch_size", "eval_batch_size", "augment", "workers",
                                   "labelled_per_batch")
                 if args[k] is not None})
    if args["normalize"] is not None:
        data["normalize"] = _norm_dict(args["normalize"])
    raw = {"name": args["name"], "seed": args["seed"], "device": args["device"], "compare": args["compare"],
           "data": data, "student": s, "methods": entries, "train": spec.model_dump(mode="json"),
           "cache": args["cache"], "eval": {"latency": args["latency"]}, "strategy": args["strategy"]}
    if args["robustness"] is not None:
        raw["eval"]["robustness"] = args["robustness"]
    for group in ("teachers", "peers"):
        if args[group]:
            named = {n: _named(p) for n, p in args[group].items()}
            if None in named.values():
                return None
            raw[group] = named
    if args["output_dir"] is not None:
        raw["output_dir"] = str(args["output_dir"])
    return raw | ({"teacher": t} if t is not None else {})


def _norm_dict(norm: Any) -> dict[str, Any]:
    if isinstance(norm, dict):
        return norm
    try:
        mean, std = norm
    except (TypeError, ValueError):
        raise DistillError(f"fit: a normalisation is (mean, std), got {norm!r}") from None
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def _data(train: Any, val: Any, test: Any, seed: int, num_classes: int | None, labels_per_class: int | None,
          normalize: Any, workers: int | None) -> DataSplits:
    named = _named(train)
    if named is not None and "train" not in named:
        name = named.pop("name", None)
        norm = validate_part(NormSpec, _norm_dict(normalize), "normalize").pair() if normalize is not None else None
        return build_data(str(name), seed=seed, labels_per_class=labels_per_class, normalize=norm, workers=workers,
                          **named)
    if normalize is not None:
        raise DistillError("fit: normalize= applies to a registered dataset; normalise your own data yourself")
    return python_data(train, val, test, seed=seed, num_classes=num_classes, labels_per_class=labels_per_class,
                       workers=workers)


def _model_spec(part: dict[str, Any], role: str, inputs: Any) -> ModelSpec:
    if "from_teacher" in part:  # only the recipe door has the teacher's spec and weights to prune
        raise DistillError(f"fit: {role} from_teacher needs the teacher as a name or spec dict with weights (a "
                           "module teacher: prune it yourself with distill.models.prune.pruned_student)")
    spec = validate_part(ModelSpec, {"inputs": inputs, **part} if inputs is not None else part, role)
    from distill.models import MODELS

    check_kwargs(MODELS.get(spec.name), spec.kwargs, role, f"model '{spec.name}'", skip=("num_classes", "input_shape"))
    return spec


def _student(student: Any, data: DataSplits, seed: int, inputs: Any) -> nn.Module:
    if isinstance(student, nn.Module):
        return student
    named = _named(student)
    if named is None:
        raise DistillError(f"fit: student is a {type(student).__name__}: give an nn.Module, a model name or a dict")
    return initialised(_model_spec(named, "student", inputs), data, "student")(seed)  # built, or from its weights


def _teacher(teacher: Any, data: DataSplits, seed: int, train: TrainSpec, inputs: Any,
             normalize: Any) -> TeacherPart | None:
    norm = validate_part(NormSpec, _norm_dict(normalize), "teacher_normalize").pair() if normalize else None
    if teacher is None or isinstance(teacher, nn.Module):
        return None if teacher is None else TeacherPart(
            teacher, {"module": _qualname(teacher), "normalize": norm, "inputs": inputs}, normalize=norm, inputs=inputs)
    named = _named(teacher)
    if named is None:
        raise DistillError(f"fit: teacher is a {type(teacher).__name__}: give an nn.Module, a model name or a dict")
    return teacher_part(_model_spec(named, "teacher", inputs), data, seed, train, norm)


def _augment(augment: dict[str, Any] | None) -> Augment | None:
    if augment is None:
        return None
    a = validate_part(AugmentSpec, augment, "augment")
    return Augment(shift=a.shift, flip=a.flip, seed=a.seed)


def _qualname(obj: Any) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def _identity(plan: Plan, methods: list) -> dict[str, Any]:
    """What shapes a Python run's training, for resume fingerprints: hashes of the data, of the teacher's weights
    and of the student's initial weights, plus every setting."""
    data = plan.data
    teacher = None
    if plan.teacher is not None:
        teacher = {**plan.teacher.spec, "weights": hash_tensors(plan.teacher.model.state_dict()),
                   "train": plan.teacher.train.model_dump(mode="json") if plan.teacher.train else None}
    return {"seed": plan.seed, "device": plan.device, "teacher": teacher,
            "data": {"train": dataset_hash(data.train), "val": dataset_hash(data.val), "test": dataset_hash(data.test),
                     "labels": hashlib.sha256(data.train.y.numpy().tobytes()).hexdigest(),
                     "batch_size": plan.batch_size, "augment": plan.augment.spec() if plan.augment else None,
                     **({"labelled_per_batch": plan.labelled_per_batch} if plan.labelled_per_batch else {})},
            "student": {"module": _qualname(plan.student), "init": hash_tensors(plan.student.state_dict()),
                        "inputs": plan.student_inputs},
            "methods": [e if e is not None else {"class": _qualname(m), "weight": w,
                                                 "args": repr(getattr(m, "_init_args", None))}
                        for m, w, e in methods],
            "train": plan.train.model_dump(mode="json"), "cache": json.loads(plan.cache.model_dump_json()),
            **_roles_identity(plan)}


def _roles_identity(plan: Plan) -> dict[str, Any]:
    """Strategy, named teachers and peers of a Python run (absent for one teacher, so fingerprints stay)."""
    out: dict[str, Any] = {}
    if plan.strategy is not None and plan.strategy.key() != "offline":
        out["strategy"] = {"name": plan.strategy.key(), **plan.strategy.args()}
    if plan.teachers:
        out["teachers"] = {n: {**t.spec, "weights": hash_tensors(t.model.state_dict())}
                           for n, t in plan.teachers.items()}
    if plan.peers:
        out["peers"] = {n: {"module": _qualname(p.model), "init": hash_tensors(p.model.state_dict())}
                        for n, p in plan.peers.items()}
    return out


def _result(outcome: Outcome, recipe: str | None) -> FitResult:
    # the distilled student; born_again's is its last generation
    student = outcome.trained.get("student") or list(outcome.trained.values())[-1]
    return FitResult(student=student.model, models={r: t.model for r, t in outcome.trained.items()},
                     metrics=outcome.metrics, report_path=outcome.report, recipe=recipe, history=student.history)


__all__ = ["FitResult", "fit"]

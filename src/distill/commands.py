"""The CLI's sub-commands other than ``run``, as plain functions (usable from Python too)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.build import build_arch, check_classes, frozen_teacher, load_data, load_model_weights
from distill.engine.checkpoint import strip_prefix
from distill.errors import DistillError
from distill.io import load_into, load_weights
from distill.plan import plan_from_recipe
from distill.pruned import rebuild_student, teacher_only
from distill.recipe import Recipe, parse_value


def list_registered() -> str:
    """Methods, models and datasets, one line each."""
    from distill.data import DATASETS
    from distill.methods import METHODS
    from distill.models import MODELS

    return "\n".join(f"{kind}: {', '.join(reg.names())}"
                     for kind, reg in (("methods", METHODS), ("models", MODELS), ("datasets", DATASETS)))


def train_teacher(recipe: Recipe, *, resume: bool = False) -> str:
    """Train only the recipe's teacher (or every teacher of ``teachers`` without weights); returns where their
    ``model.safetensors`` went. Runs data-parallel under torchrun."""
    from distill.engine.dist import distributed, main_log
    from distill.run import obtain_teacher

    specs = {"teacher": recipe.teacher} if recipe.teacher else \
        {f"teachers/{n}": s for n, s in (recipe.teachers or {}).items()}
    if not specs:
        raise DistillError("the recipe has no 'teacher' section")
    if all(s.weights for s in specs.values()):
        raise DistillError(f"{'teacher.weights is' if recipe.teacher else 'every teacher has weights'} set: "
                           "nothing to train")
    with distributed(recipe.device):
        plan = plan_from_recipe(teacher_only(recipe))  # a student pruned from the teacher waits for it
        done = [obtain_teacher(plan, part=p, role=r, resume=resume, log=main_log(print)).weights
                for r, p in plan.teacher_parts().items() if p.train is not None]
    return ", ".join(str(w.resolve()) for w in done if w is not None)


def evaluate_weights(recipe: Recipe, checkpoint: str, *, role: str = "student") -> dict:
    """Test-set metrics of a weights file (or checkpoint directory) for the recipe's student/teacher."""
    from distill.evaluate import model_metrics, predict

    spec = recipe.student if role == "student" else recipe.teacher
    if spec is None:
        raise DistillError(f"the recipe has no '{role}' section")
    data = load_data(recipe)
    model = rebuild_student(recipe, data) if role == "student" else build_arch(spec, data, recipe.seed)
    path = Path(checkpoint)
    if path.is_dir():
        load_into(model, strip_prefix(load_weights(path / "weights.safetensors"), "model."), str(path))
    else:
        load_model_weights(model, checkpoint, "--checkpoint")
    check_classes(data, {role: spec.inputs}, **{role: model})
    teacher_logits = None
    if role == "student" and recipe.teacher is not None and recipe.teacher.weights:
        teacher = build_arch(recipe.teacher, data, recipe.seed)
        load_model_weights(teacher, recipe.teacher.weights, "teacher")
        teacher_logits = predict(frozen_teacher(teacher, recipe.teacher, data), data.test)
    keys = spec.inputs
    if role == "teacher":
        model, keys = frozen_teacher(model, spec, data), None
    metrics = model_metrics(model, data.test, data.test.y, num_classes=data.num_classes, inputs=keys,
                            teacher_logits=teacher_logits, weights_path=path if path.is_file() else None,
                            latency=recipe.eval.latency)
    return {"checkpoint": str(path), "role": role, **metrics}


def inspect(target: str, kwargs: list[str], *, role: str, input_shape: str, num_classes: int) -> str:
    """Every module path of a model with its output shape, from a dry run on a batch of two."""
    from distill.models import build_model
    from distill.taps import format_probe, probe

    if target.endswith((".yaml", ".yml")):
        from distill.recipe import load_recipe

        recipe = load_recipe(target, kwargs)
        spec = recipe.teacher if role == "teacher" else recipe.student
        if spec is None:
            raise DistillError(f"{target} has no '{role}' section")
        from distill.data.stream import head
        from distill.models import select

        data = load_data(recipe, label_budget=False)
        model = rebuild_student(recipe, data) if role == "student" else build_arch(spec, data, recipe.seed)
        sample = select(head(data.train, 2), spec.inputs, role)  # real samples: a dict of fields for text
        return format_probe(probe(model, sample), model) + "\n" + _summary(model, _sample_shape(sample))
    else:
        args = dict(_kv(item) for item in kwargs)
        shape = _shape(input_shape)
        if ":" in target:
            args = {"target": target, "kwargs": args}
            target = "external"
        model = build_model(target, num_classes=num_classes, input_shape=shape, **args)
    return format_probe(probe(model, torch.zeros(2, *shape)), model) + "\n" + _summary(model, shape)


def inspect_pairs(target: str, rest: list[str], *, input_shape: str, num_classes: int) -> str:
    """``inspect --pairs``: each model's stages and the layer pairs ``layers: auto`` gives every kind of method,
    from a dry run: of a recipe's teacher and student on real samples, or of two models (zoo names or import
    paths ``pkg.mod:Class``) on zeros of ``input_shape``."""
    from distill.stages import find_layout, format_layout, format_pairs

    if target.endswith((".yaml", ".yml")):
        from distill.data.stream import head
        from distill.models import feed
        from distill.plan import plan_from_recipe
        from distill.recipe import load_recipe

        plan = plan_from_recipe(load_recipe(target, rest))
        if plan.teacher is None:
            raise DistillError(f"{target} has no 'teacher' section: there is nothing to pair")
        x = head(plan.data.train, 2)
        t = find_layout(plan.teacher.frozen(plan.data), x, hooked=plan.teacher.model)
        s = find_layout(plan.student, x, call=lambda m, v: feed(m, v, plan.student_inputs, "student"))
    else:
        if len(rest) != 1:
            raise DistillError("inspect --pairs TEACHER STUDENT: give two models (zoo names or import paths), "
                               "or a recipe")
        shape = _shape(input_shape)
        t, s = (find_layout(_named_model(n, num_classes, shape), torch.zeros(2, *shape)) for n in (target, rest[0]))
    return "\n".join([format_layout(t, "teacher"), format_layout(s, "student"), format_pairs(s, t)])


def _named_model(target: str, num_classes: int, shape: tuple[int, ...]) -> nn.Module:
    from distill.models import build_model

    if ":" in target:
        return build_model("external", num_classes=num_classes, input_shape=shape, target=target, kwargs={})
    return build_model(target, num_classes=num_classes, input_shape=shape)


def _kv(item: str) -> tuple[str, object]:
    if "=" not in item:
        raise DistillError(f"model argument {item!r} is not of the form key=value")
    key, value = item.split("=", 1)
    return key, parse_value(value)


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise DistillError(f"--input-shape {text!r}: expected positive integers like 1,28,28")
    return shape


def _sample_shape(sample: Any) -> str:
    """'(B, 1, 28, 28)', or 'input_ids (B, 64), attention_mask (B, 64)' for a dict of fields."""
    if isinstance(sample, dict):
        return ", ".join(f"{k} (B, {', '.join(map(str, v.shape[1:]))})" for k, v in sample.items())
    return f"(B, {', '.join(map(str, sample.shape[1:]))})"


def _summary(model: nn.Module, shape: tuple[int, ...] | str) -> str:
    params = sum(p.numel() for p in model.parameters())
    text = shape if isinstance(shape, str) else f"(B, {', '.join(map(str, shape))})"
    return f"{type(model).__name__}: {params:,} parameters, input {text}"


def build_cache(recipe: Recipe) -> str:
    """``distill cache build``: (re)build the recipe's teacher cache; returns its one-line summary.

    Under torchrun a teacher without weights trains data-parallel, and rank 0 alone builds the cache."""
    from distill.engine.dist import distributed

    with distributed(recipe.device):
        return _build_cache(recipe)


def _build_cache(recipe: Recipe) -> str:
    from distill.cache import obtain_cache, summary
    from distill.engine.dist import main_log
    from distill.run import obtain_teacher

    if recipe.teachers:
        raise DistillError("strategy multi_teacher: `distill run` builds one cache per teacher "
                           "(<output_dir>/teachers/<name>/cache); `cache build` takes a single-teacher recipe")
    if recipe.teacher is None:
        raise DistillError("the recipe has no 'teacher' section: there is nothing to cache")
    plan = plan_from_recipe(recipe)
    log = main_log(print)
    obtain_teacher(plan, resume=True, log=log)
    assert plan.teacher is not None
    frozen = plan.teacher.frozen(plan.data)
    check_classes(plan.data, teacher=frozen)
    return summary(obtain_cache(plan, frozen, rebuild=True, log=log))


def verify_cache(path: str, recipe_path: str | None, overrides: list[str]) -> str:
    """``distill cache verify``: shard sizes and checksums, plus the fingerprint when a recipe is given."""
    from distill.cache import open_cache, summary

    if not Path(path).is_dir():
        raise DistillError(f"teacher cache {path}: no such directory")
    if recipe_path is None:
        if overrides:
            raise DistillError("overrides need --recipe")
        return summary(open_cache(Path(path)))
    from distill.cache.plan import fingerprint_for
    from distill.recipe import load_recipe
    from distill.run import finished_teacher

    recipe = load_recipe(recipe_path, overrides)
    if recipe.teacher is None:
        raise DistillError("the recipe has no 'teacher' section")
    plan = plan_from_recipe(recipe)
    assert plan.teacher is not None
    if plan.teacher.train is not None and finished_teacher(plan) is None:  # verifying never trains anything
        raise DistillError(f"the recipe's teacher has no weights and {plan.out / 'teacher'} holds no finished "
                           f"teacher of this recipe: train it first (`distill teacher {recipe_path}`)")
    return summary(open_cache(Path(path), fingerprint_for(plan, plan.teacher.frozen(plan.data))))

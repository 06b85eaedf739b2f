"""Turn a validated Recipe into objects: data splits, models, the frozen teacher, methods."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.data import Augment, DataSplits, build_data, head
from distill.errors import DistillError, first_line
from distill.io import load_into, load_weights
from distill.methods import METHODS, MethodSet
from distill.models import FrozenTeacher, Keys, as_logits, build_model, feed
from distill.models.base import SHAPE_FREE
from distill.recipe import ModelSpec, Recipe


def load_data(recipe: Recipe, *, label_budget: bool = True) -> DataSplits:
    """The recipe's dataset with its normalisation and (unless ``label_budget=False``) its label budget."""
    d = recipe.data
    norm = d.normalize.pair() if d.normalize else None
    return build_data(d.name, seed=recipe.seed, labels_per_class=d.labels_per_class if label_budget else None,
                      normalize=norm, workers=d.workers, classes=d.classes, **d.kwargs)


def build_augment(recipe: Recipe) -> Augment | None:
    """The recipe's training augmentation (``data.augment``), or None when it has none."""
    spec = recipe.data.augment
    return None if spec is None else Augment(shift=spec.shift, flip=spec.flip, seed=spec.seed)


def build_arch(spec: ModelSpec, data: DataSplits, seed: int) -> nn.Module:
    """A freshly initialised model; the same seed gives the same initial weights."""
    shape = data.shape_for(spec.inputs)
    if shape is None:
        if spec.name not in SHAPE_FREE:
            raise DistillError(f"model '{spec.name}' reads one tensor but dataset '{data.name}' has dict inputs "
                               f"{sorted(data.input_shape)}: set its 'inputs' to one key")
        # these models read dicts and are built from their own arguments; the token ids' shape, (S,), is the
        # one they may check (a sequence longer than a language model's context)
        prefix = f"{spec.inputs}." if isinstance(spec.inputs, str) else ""
        shape = next((tuple(v) for k, v in data.input_shape.items() if k.endswith("input_ids")
                      and k.startswith(prefix)), (1,))
    if spec.resize is not None:  # a teacher of another domain sees inputs resized to its own size
        shape = (*shape[:-len(spec.resize)], *spec.resize)
    torch.manual_seed(seed)
    return build_model(spec.name, num_classes=spec.classes or data.num_classes, input_shape=shape, **spec.kwargs)


def resolve_path(path: str) -> Path:
    """A file path, or ``pkg:<package>/<relative path>`` for a file shipped inside an installed package."""
    if not path.startswith("pkg:"):
        return Path(path).expanduser()
    package, _, rel = path[4:].partition("/")
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.submodule_search_locations:
        raise DistillError(f"{path!r}: package {package!r} is not installed")
    return Path(list(spec.submodule_search_locations)[0]) / rel


def load_model_weights(model: nn.Module, path: str, role: str) -> Path:
    """Load ``path`` (safetensors or a weights-only torch state dict) strictly into ``model``."""
    file = resolve_path(path)
    load_into(model, load_weights(file), f"{role}.weights {file}")
    return file


def frozen_teacher(model: nn.Module, spec: ModelSpec, data: DataSplits) -> FrozenTeacher:
    """Wrap a teacher: eval + no grad, its own input normalisation when it differs from the student's, and its
    own input size (``resize``, ``resize_margin``)."""
    teacher_norm = spec.normalize.pair() if spec.normalize else None
    return FrozenTeacher(model, student_norm=(tuple(data.mean), tuple(data.std)), teacher_norm=teacher_norm,
                         inputs=spec.inputs, resize=tuple(spec.resize) if spec.resize else None,
                         margin=spec.resize_margin or 0)


def output_classes(model: nn.Module, data: DataSplits, inputs: Keys = None, role: str = "model") -> int:
    """Number of classes a model outputs, from a dry run on two training samples."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = feed(model, head(data.train, 2), inputs, role)
    except DistillError:
        raise
    except Exception as e:  # a model that cannot take this data's shape
        raise DistillError(f"{role} ({type(model).__name__}) cannot run on {data.name} inputs of shape "
                           f"{_shape_text(data.input_shape)}: {first_line(e)}") from None
    finally:
        model.train(was)
    try:
        logits = as_logits(out)
    except DistillError as e:
        raise DistillError(f"{role} ({type(model).__name__}): {e}") from None
    rank = 3 if data.tokens else 2  # a language model: (B, S, V) next-token logits
    if logits.ndim != rank or logits.shape[0] != min(2, len(data.train)):
        if data.tokens:
            raise DistillError(f"{role} ({type(model).__name__}) returned a tensor of shape {tuple(logits.shape)}; "
                               f"dataset '{data.name}' predicts tokens: expected logits (batch, seq_len, vocab)")
        raise DistillError(f"{role} ({type(model).__name__}) returned a tensor of shape {tuple(logits.shape)} for a "
                           f"batch of {min(2, len(data.train))}; expected logits (batch, num_classes)")
    return int(logits.shape[-1])


def _shape_text(shape: Any) -> str:
    return str({k: tuple(v) for k, v in shape.items()}) if isinstance(shape, dict) else str(tuple(shape))


def check_classes(data: DataSplits, inputs: dict[str, Keys] | None = None, **models: nn.Module) -> None:
    """Every model must output the dataset's number of classes; teacher vs student mismatches are named.
    ``inputs`` maps a role to the keys of a dict input it reads."""
    keys = inputs or {}
    counts = {role: output_classes(m, data, keys.get(role), role) for role, m in models.items()}
    if data.tokens:
        return _check_vocabularies(data, counts if not data.paired else {k: v for k, v in counts.items()
                                                                          if k != "teacher"})
    if "teacher" in counts and "student" in counts and counts["teacher"] != counts["student"]:
        raise DistillError(f"teacher and student disagree on the number of classes: teacher outputs "
                           f"{counts['teacher']}, student outputs {counts['student']} "
                           f"(dataset '{data.name}' has {data.num_classes})")
    for role, n in counts.items():
        if n != data.num_classes:
            raise DistillError(f"{role} outputs {n} classes but dataset '{data.name}' has {data.num_classes}")


def _check_vocabularies(data: DataSplits, counts: dict[str, int]) -> None:
    """Language models: every vocabulary covers the tokenizer's, and teacher and student share one (their logits
    may be padded beyond the tokenizer's size, but then alike)."""
    for role, n in counts.items():
        if n < data.num_classes:
            raise DistillError(f"{role} predicts {n:,} tokens but the tokenizer of dataset '{data.name}' has "
                               f"{data.num_classes:,}")
    if "teacher" in counts and "student" in counts and counts["teacher"] != counts["student"]:
        raise DistillError(f"teacher and student vocabularies differ (teacher {counts['teacher']:,} tokens, student "
                           f"{counts['student']:,}): token-level distillation compares distributions over one "
                           "vocabulary; build the student with the teacher's (config vocab_size), or give each its "
                           "tokenizer (data.tokenizers: {teacher: A, student: B}) and use method uld")


def build_methods(recipe: Recipe) -> MethodSet:
    """The recipe's methods (with their weights) as one MethodSet."""
    methods = [METHODS.get(m.name)(**m.kwargs) for m in recipe.methods]
    for method, spec in zip(methods, recipe.methods):
        if spec.teacher is not None:
            method.teacher_key = spec.teacher
    return MethodSet(methods, [m.weight for m in recipe.methods])


def fingerprint(recipe: Recipe, role: str) -> str:
    """Identity of a role's training under a recipe (see ``distill.plan.fingerprint``)."""
    from distill.plan import fingerprint as identity_fingerprint
    from distill.plan import recipe_identity

    return identity_fingerprint(recipe_identity(recipe), role)


def run_teacher(recipe: Recipe, data: DataSplits, run_dir: Path) -> tuple[FrozenTeacher, Path, str]:
    """A finished run's teacher, frozen with its own preprocessing: the one trained or adapted in ``run_dir``
    (``teacher/model.safetensors``), else the recipe's ``weights``; with its file and how to show it."""
    from distill.engine.checkpoint import strip_prefix
    from distill.strategies import build_strategy

    spec = recipe.teacher
    local = run_dir / "teacher" / "model.safetensors"
    file = local if local.is_file() else resolve_path(spec.weights) if spec.weights else None
    if file is None:
        raise DistillError(f"{local} not found")
    state = load_weights(file)
    if file == local and build_strategy(recipe.strategy.name, recipe.strategy.kwargs).adapts_teacher:
        # the teacher's network fine-tuned here with this task's head, saved inside its preprocessing wrapper
        state, spec = strip_prefix(state, "model."), spec.model_copy(update={"classes": None})
    model = build_arch(spec, data, recipe.seed)
    load_into(model, state, f"teacher weights {file}")
    shown = "teacher/model.safetensors" if file == local else str(spec.weights)
    return frozen_teacher(model, spec, data), file, shown

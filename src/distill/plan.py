"""A Plan: what one run is made of, built once, from a recipe or from Python objects.

Both doors (``distill run recipe.yaml`` and ``distill.fit(...)``) end in the same Plan; the runner
(``distill.run.execute``) trains it, the report reads it. ``identity`` is the JSON description that resume
fingerprints are computed from: the recipe itself for a recipe, hashes of weights and data for Python objects.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from distill.build import build_arch, build_augment, build_methods, load_data, load_model_weights
from distill.data import Augment, DataSplits
from distill.methods import MethodSet
from distill.models import FrozenTeacher, Keys
from distill.recipe import CacheSpec, ModelSpec, Recipe, TrainSpec

Norm = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass
class TeacherPart:
    """The teacher of a plan: pretrained (``train`` None) or to be trained here with cross-entropy first."""

    model: nn.Module
    spec: dict[str, Any]  # JSON identity of its architecture and preprocessing (part of the cache fingerprint)
    normalize: Norm | None = None  # the inputs it expects, when they differ from the student's
    inputs: Keys = None  # the fields of a dict input it reads
    weights: Path | None = None  # the file its weights came from (size on disk in the report)
    train: TrainSpec | None = None  # set: train it here first (it has no weights)

    def frozen(self, data: DataSplits) -> FrozenTeacher:
        """Eval mode, no gradients, its own normalisation and input keys, enforced in one place."""
        return FrozenTeacher(self.model, student_norm=(tuple(data.mean), tuple(data.std)),
                             teacher_norm=self.normalize, inputs=self.inputs)


@dataclass
class Plan:
    """Everything a run needs, as objects. ``student`` holds the initial weights until training starts."""

    name: str
    seed: int
    out: Path
    device: str
    data: DataSplits
    student: nn.Module
    methods: MethodSet
    train: TrainSpec
    teacher: TeacherPart | None = None
    student_inputs: Keys = None
    batch_size: int = 128
    eval_batch_size: int = 1000
    cache: CacheSpec = field(default_factory=CacheSpec)
    augment: Augment | None = None
    compare: bool = True
    latency: bool = True
    identity: dict[str, Any] = field(default_factory=dict)
    recipe: Recipe | None = None  # the recipe this plan was built from (or that a Python run is equivalent to)


def plan_from_recipe(recipe: Recipe, *, data: DataSplits | None = None) -> Plan:
    """Build a recipe into a Plan: data, models (weights loaded), methods. ``data`` reuses loaded splits."""
    data = load_data(recipe) if data is None else data
    teacher = teacher_part(recipe.teacher, data, recipe.seed, recipe.train) if recipe.teacher else None
    return Plan(name=recipe.name, seed=recipe.seed, out=recipe.out, device=recipe.device, data=data,
                student=build_arch(recipe.student, data, recipe.seed), methods=build_methods(recipe),
                train=recipe.train, teacher=teacher, student_inputs=recipe.student.inputs,
                batch_size=recipe.data.batch_size, eval_batch_size=recipe.data.eval_batch_size, cache=recipe.cache,
                augment=build_augment(recipe), compare=recipe.compare, latency=recipe.eval.latency,
                identity=recipe_identity(recipe), recipe=recipe)


def teacher_part(spec: ModelSpec, data: DataSplits, seed: int, train: TrainSpec,
                 normalize: Norm | None = None) -> TeacherPart:
    """A named teacher: built, its weights loaded, or marked to be trained here (with its own ``train`` section or
    ``train``). ``normalize``: its input normalisation when the spec names none."""
    model = build_arch(spec, data, seed)
    weights = load_model_weights(model, spec.weights, "teacher") if spec.weights else None
    return TeacherPart(model, spec.model_dump(mode="json", exclude={"train", "weights"}),
                       normalize=spec.normalize.pair() if spec.normalize else normalize, inputs=spec.inputs,
                       weights=weights, train=None if weights else spec.train or train)


def recipe_identity(recipe: Recipe) -> dict[str, Any]:
    """What shapes a recipe's training: the recipe minus where its outputs go and how they are shown."""
    body = recipe.model_dump(mode="json", exclude={"output_dir", "eval", "compare", "name"})
    # keys added after runs were made are left out while unset, so those runs keep their fingerprints
    for part, key in (("data", "augment"), ("data", "workers"), ("teacher", "inputs"), ("student", "inputs")):
        if isinstance(body.get(part), dict) and body[part].get(key) is None:
            body[part].pop(key, None)
    return body


ROLE_KEYS = {"teacher": {"seed", "data", "teacher", "train", "device"},
             "scratch": {"seed", "data", "student", "train", "device"}}


def fingerprint(identity: dict[str, Any], role: str) -> str:
    """Identity of a role's training: resuming is refused when anything that shapes it changed."""
    keep = ROLE_KEYS.get(role)
    body = {k: v for k, v in identity.items() if keep is None or k in keep}
    body["role"] = role
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

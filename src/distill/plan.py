"""A Plan: what one run is made of, built once, from a recipe or from Python objects.

Both doors (``distill run recipe.yaml`` and ``distill.fit(...)``) end in the same Plan; the runner
(``distill.run.execute``) trains it, the report reads it. ``identity`` is the JSON description that resume
fingerprints are computed from: the recipe itself for a recipe, hashes of weights and data for Python objects.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from distill.build import build_arch, build_augment, build_methods, load_data, load_model_weights
from distill.data import Augment, DataSplits
from distill.errors import DistillError
from distill.methods import MethodSet
from distill.models import FrozenTeacher, Keys
from distill.pruned import ready_teacher, student_maker
from distill.recipe import CacheSpec, ModelSpec, Recipe, RobustnessSpec, TrainSpec

if TYPE_CHECKING:
    from distill.strategies import Strategy

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
    resize: tuple[int, ...] | None = None  # its input size, when it differs from the data's (another domain)
    margin: int = 0  # a black border around the resized content

    def frozen(self, data: DataSplits) -> FrozenTeacher:
        """Eval mode, no gradients, its own normalisation, input keys and input size, enforced in one place."""
        return FrozenTeacher(self.model, student_norm=(tuple(data.mean), tuple(data.std)),
                             teacher_norm=self.normalize, inputs=self.inputs, resize=self.resize,
                             margin=self.margin)


@dataclass
class Peer:
    """A student trained beside the plan's ``student`` (strategy mutual): its module and the input keys it reads."""

    model: nn.Module
    inputs: Keys = None


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
    eval_batch_size: int | None = None  # None: the fastest for each model, measured (distill.batching)
    cache: CacheSpec = field(default_factory=CacheSpec)
    augment: Augment | None = None
    compare: bool = True
    latency: bool = True
    embeddings: dict[str, str] | None = None  # eval.embeddings: tap paths whose features the report probes
    robustness: RobustnessSpec | None = None  # eval.robustness: FGSM and PGD top-1 in the report (distill.robustness)
    group_by_length: bool = False  # data.group_by_length: training batches of similar token counts
    labelled_per_batch: int = 0  # data.labelled_per_batch: labelled samples in every batch of a mixed split
    identity: dict[str, Any] = field(default_factory=dict)
    recipe: Recipe | None = None  # the recipe this plan was built from (or that a Python run is equivalent to)
    strategy: Strategy | None = None  # who teaches whom; None: offline
    teachers: dict[str, TeacherPart] = field(default_factory=dict)  # several named teachers (multi_teacher)
    peers: dict[str, Peer] = field(default_factory=dict)  # students trained beside `student` (mutual)
    fresh_student: Callable[[int], nn.Module] | None = None  # a new student initialised from a seed
    dry_run: list[tuple[str, str]] | None = None  # set: a dry run's miniature (distill.dry_run), roles recorded
    # called after each epoch's evaluation of a role (role, epoch index, metrics): `distill auto` prunes weak trials
    epoch_hook: Callable[[str, int, dict[str, float]], None] | None = None

    def __post_init__(self) -> None:
        if self.robustness is not None:  # refused before anything trains: data the attacks cannot perturb
            from distill.robustness import check_inputs

            check_inputs(self.data)

    def teacher_parts(self) -> dict[str, TeacherPart]:
        """Every teacher by the role it trains under: ``teacher``, or ``teachers/<name>`` for several."""
        parts = {"teacher": self.teacher} if self.teacher is not None else {}
        return parts | {f"teachers/{n}": p for n, p in self.teachers.items()}


def plan_from_recipe(recipe: Recipe, *, data: DataSplits | None = None) -> Plan:
    """Build a recipe into a Plan: data, models (weights loaded), methods. ``data`` reuses loaded splits."""
    from distill.engine.dist import check_device
    from distill.io import check_output_dir
    from distill.strategies import build_strategy

    check_device(recipe.device)
    check_output_dir(recipe.out)
    data = load_data(recipe) if data is None else data
    methods = build_methods(recipe)
    if data.tokens:
        methods.require_token_level()
        methods.check_tokenizers(data.paired)
    teacher = teacher_part(recipe.teacher, data, recipe.seed, recipe.train) if recipe.teacher else None
    if data.paired and teacher is not None and teacher.train is not None:
        raise DistillError("teacher: with two tokenizers (data.tokenizers) the dataset's targets are the student's "
                           "tokens, which a teacher trained here cannot learn; give it trained weights (weights, or "
                           "pretrained: true)")
    teachers = {k: teacher_part(s, data, recipe.seed, recipe.train) for k, s in (recipe.teachers or {}).items()}
    # a student built from the teacher (from_teacher: prune) needs its trained weights now (distill.pruned)
    teacher = ready_teacher(teacher, recipe)
    # each peer starts from its own initialisation: identical students would stay identical under mutual learning
    peers = {k: Peer(student_maker(s, data, teacher, f"peers.{k}")(recipe.seed + i), s.inputs)
             for i, (k, s) in enumerate((recipe.peers or {}).items(), start=1)}
    make_student = student_maker(recipe.student, data, teacher)
    return Plan(name=recipe.name, seed=recipe.seed, out=recipe.out, device=recipe.device, data=data,
                student=make_student(recipe.seed), methods=methods,
                train=recipe.train, teacher=teacher, student_inputs=recipe.student.inputs,
                batch_size=recipe.data.batch_size, eval_batch_size=recipe.data.eval_batch_size, cache=recipe.cache,
                group_by_length=bool(recipe.data.group_by_length),
                labelled_per_batch=recipe.data.labelled_per_batch or 0,
                augment=build_augment(recipe), compare=recipe.compare, latency=recipe.eval.latency,
                embeddings=recipe.eval.embeddings, robustness=recipe.eval.robustness,
                identity=recipe_identity(recipe), recipe=recipe,
                strategy=build_strategy(recipe.strategy.name, recipe.strategy.kwargs), teachers=teachers,
                peers=peers, fresh_student=make_student)


def teacher_part(spec: ModelSpec, data: DataSplits, seed: int, train: TrainSpec,
                 normalize: Norm | None = None) -> TeacherPart:
    """A named teacher: built, its weights loaded, or marked to be trained here (with its own ``train`` section or
    ``train``). ``normalize``: its input normalisation when the spec names none."""
    model = build_arch(spec, data, seed)
    weights = load_model_weights(model, spec.weights, "teacher") if spec.weights else None
    # keys added later are left out while unset, so existing caches keep their fingerprints
    identity = spec.model_dump(mode="json", exclude={"train", "weights"}
                               | {k for k in ("classes", "resize", "resize_margin", "pretrained")
                                  if getattr(spec, k) is None})
    as_is = weights is not None or bool(spec.pretrained)  # nothing to train: loaded, or built trained
    return TeacherPart(model, identity, normalize=spec.normalize.pair() if spec.normalize else normalize,
                       inputs=spec.inputs, weights=weights, train=None if as_is else spec.train or train,
                       resize=tuple(spec.resize) if spec.resize else None, margin=spec.resize_margin or 0)


def recipe_identity(recipe: Recipe) -> dict[str, Any]:
    """What shapes a recipe's training: the recipe minus where its outputs go and how they are shown."""
    body = recipe.model_dump(mode="json", exclude={"output_dir", "eval", "compare", "name", "search"})
    # keys added after runs were made are left out while unset, so those runs keep their fingerprints
    for part, key in (("data", "augment"), ("data", "workers"), ("data", "eval_batch_size"), ("data", "classes"),
                      ("data", "group_by_length"), ("data", "labelled_per_batch"),
                      ("teacher", "pretrained"), ("student", "pretrained"), ("teacher", "inputs"),
                      ("student", "inputs"), ("teacher", "classes"), ("student", "classes"), ("teacher", "resize"),
                      ("student", "resize"), ("teacher", "resize_margin"), ("student", "resize_margin")):
        if isinstance(body.get(part), dict) and body[part].get(key) is None:
            body[part].pop(key, None)
    for key in ("teachers", "peers"):
        if body.get(key) is None:
            body.pop(key, None)
    if body.get("strategy") == {"name": "offline"}:
        body.pop("strategy")
    for m in body.get("methods", []):
        if m.get("teacher") is None:
            m.pop("teacher", None)
        if not m.get("allow_negative"):
            m.pop("allow_negative", None)
    return body


def fingerprint(identity: dict[str, Any], role: str) -> str:
    """Identity of a role's training: resuming is refused when anything that shapes it changed. A teacher
    trained here (``teacher``, ``teachers/<name>``) and a scratch baseline (``scratch``, ``scratch_<peer>``)
    depend on less than the whole recipe, so runs that differ only in methods or strategy share them."""
    body = dict(_role_identity(identity, role))
    body["role"] = role
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


def _role_identity(identity: dict[str, Any], role: str) -> dict[str, Any]:
    """The part of a run's identity that a role depends on."""
    if role == "teacher" or role.startswith("teachers/"):
        return _teacher_identity(identity, role)
    keep = {"seed", "data", "student", "train", "device"} if role == "scratch" else None
    if role.startswith("scratch_"):
        keep = {"seed", "data", "student", "peers", "train", "device"}
    specs = [identity.get("student"), *(identity.get("peers") or {}).values()]
    if keep is not None and any(isinstance(s, dict) and s.get("from_teacher") for s in specs):
        keep.add("teacher")  # a student pruned from the teacher starts from the teacher's weights and structure
    return {k: v for k, v in identity.items() if keep is None or k in keep}


def _teacher_identity(identity: dict[str, Any], role: str) -> dict[str, Any]:
    """A teacher trained here depends on its own spec, the data it sees (every label: not the students' label
    budget), the seed and device, and the top-level ``train`` only when it has no ``train`` of its own."""
    spec = identity.get("teacher") if role == "teacher" else (identity.get("teachers") or {}).get(role[9:])
    data = identity.get("data")
    body = {k: identity[k] for k in ("seed", "device") if k in identity}
    body |= {"teacher": spec, "data": {k: v for k, v in data.items() if k != "labels_per_class"}
             if isinstance(data, dict) else data}
    if not isinstance(spec, dict) or spec.get("train") is None:
        body["train"] = identity.get("train")
    return body

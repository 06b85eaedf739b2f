"""Students built from the teacher: ``student: {from_teacher: prune, target_params: N}`` (or ``target_macs``).

The student is a structurally pruned copy of the recipe's trained teacher (``distill.models.prune``), distilled from
the unpruned teacher. ``init: pruned`` (default) starts it from the teacher's surviving weights; ``init: random``
gives the same structure with every weight drawn from the seed (the random-initialised baseline of equal size).
Pruning is deterministic, so every place that needs the student's architecture (the plan, ``distill evaluate``,
``distill export``, ``distill inspect``) rebuilds it by pruning the teacher again: saved weights alone do not
describe a pruned network.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from distill.build import build_arch, load_model_weights
from distill.data import DataSplits, head
from distill.errors import DistillError
from distill.registry import closest

if TYPE_CHECKING:
    from distill.plan import Plan, TeacherPart
    from distill.recipe import ModelSpec, Recipe

KEYS = ("name", "from_teacher", "target_params", "target_macs", "init", "inputs")  # what such a student takes
INITS = ("pruned", "random")
# ModelSpec fields a pruned student takes from its teacher, so cannot set itself
FROM_TEACHER = ("weights", "classes", "resize", "resize_margin", "normalize", "train", "pretrained")


def check_recipe(recipe: Recipe) -> None:
    """Refuse, in one line naming the key, a ``from_teacher`` spec that cannot be built: on a teacher, with
    builder arguments or keys of its own, without exactly one positive target, without a single teacher to prune,
    or without torch-pruning installed."""
    for where, spec in (("teacher", recipe.teacher), *((f"teachers.{k}", s) for k, s in
                                                       (recipe.teachers or {}).items())):
        if spec is not None and (spec.from_teacher or spec.target_params or spec.target_macs):
            raise DistillError(f"{where}.from_teacher / target_params / target_macs: only a student (student, peers) "
                               "is built from the teacher")
    for where, spec in students(recipe):
        if spec.from_teacher is None:
            if spec.target_params is not None or spec.target_macs is not None:
                raise DistillError(f"{where}.target_{'params' if spec.target_params else 'macs'} applies to a student "
                                   f"built from the teacher: add {where}.from_teacher: prune")
            continue
        _check_keys(spec, where)
        _check_teacher(recipe, spec, where)
    if any(spec.from_teacher for _, spec in students(recipe)):
        from distill.models.prune import require_torch_pruning

        require_torch_pruning()


def students(recipe: Recipe) -> list[tuple[str, ModelSpec]]:
    """Every student spec of a recipe by its key: ``student`` and ``peers.<name>``."""
    return [("student", recipe.student), *((f"peers.{k}", s) for k, s in (recipe.peers or {}).items())]


def _check_keys(spec: ModelSpec, where: str) -> None:
    """Only the keys of ``KEYS``, one target, ``init`` one of ``INITS``."""
    for key in spec.kwargs:
        if key != "init":
            raise DistillError(f"{where}.{key}: unknown key for a student built from the teacher (from_teacher: "
                               f"prune){closest(key, list(KEYS))} (allowed: {', '.join(KEYS)})")
    for key in FROM_TEACHER:
        if getattr(spec, key) is not None:
            raise DistillError(f"{where}.{key}: a student built from the teacher (from_teacher: prune) takes its "
                               f"architecture and starting weights from the teacher; remove {where}.{key}")
    if (spec.target_params is None) == (spec.target_macs is None):
        got = "both" if spec.target_params is not None else "neither"
        raise DistillError(f"{where}.from_teacher: prune needs exactly one of target_params, target_macs (got {got})")
    init = spec.kwargs.get("init", "pruned")
    if init not in INITS:
        raise DistillError(f"{where}.init: {init!r} is not one of {', '.join(INITS)}")


def _check_teacher(recipe: Recipe, spec: ModelSpec, where: str) -> None:
    """One teacher, of this task and input: the student is a thinner copy of it."""
    teacher = recipe.teacher
    if teacher is None:
        several = " (not one of 'teachers': name it as the recipe's 'teacher')" if recipe.teachers else ""
        raise DistillError(f"{where}.from_teacher: prune needs the recipe's 'teacher', the trained model to prune"
                           f"{several}")
    if spec.name != teacher.name:
        raise DistillError(f"{where}.name {spec.name!r}: a student built from the teacher is the teacher's "
                           f"architecture ({teacher.name!r}) pruned; remove {where}.name")
    for key in ("classes", "resize"):
        if getattr(teacher, key) is not None:
            raise DistillError(f"teacher.{key}: {where}.from_teacher: prune needs a teacher of this task and input "
                               "size (the student is the teacher, thinner)")
    if spec.inputs != teacher.inputs:
        raise DistillError(f"{where}.inputs {spec.inputs!r}: a student pruned from the teacher reads what the teacher "
                           f"reads (teacher.inputs {teacher.inputs!r}); set it the same")


def ready_teacher(part: TeacherPart | None, recipe: Recipe, out: Path | None = None) -> TeacherPart | None:
    """The teacher to prune, with trained weights: as loaded (``weights``, ``pretrained``), or trained here by an
    earlier run of this recipe into ``<out>/teacher/`` (default the recipe's output folder), which the run then
    loads instead of training again. Unchanged when no student is built from it."""
    if part is None or part.train is None or not any(s.from_teacher for _, s in students(recipe)):
        return part
    from distill.plan import fingerprint, recipe_identity
    from distill.run import _finished

    folder = (recipe.out if out is None else out) / "teacher"
    done = _finished(folder, fingerprint(recipe_identity(recipe), "teacher"), part.model, part.inputs)
    if done is None:
        raise DistillError(f"student.from_teacher: prune needs the teacher's trained weights, and this teacher is "
                           f"trained here but {folder} holds no finished teacher of this recipe: train it first "
                           "(distill teacher RECIPE), or give teacher.weights")
    return replace(part, weights=done.weights, train=None)


def student_maker(spec: ModelSpec, data: DataSplits, teacher: TeacherPart | None,
                  where: str = "student") -> Callable[[int], nn.Module]:
    """``seed -> student`` for a student spec: built from its name, or pruned from ``teacher`` (pruned once here;
    each call copies it, and ``init: random`` draws its weights from the seed)."""
    if spec.from_teacher is None:
        return initialised(spec, data, where)
    if teacher is None or teacher.train is not None:
        raise DistillError(f"{where}.from_teacher: prune needs a teacher with trained weights")
    from distill.models import select
    from distill.models.prune import pruned_student, reinitialise

    example = select(head(data.train, 2), teacher.inputs, "teacher")
    base = pruned_student(teacher.model, example, target_params=spec.target_params, target_macs=spec.target_macs,
                          where=where)
    random = spec.kwargs.get("init", "pruned") == "random"
    return lambda seed: reinitialise(copy.deepcopy(base), seed) if random else copy.deepcopy(base)


def initialised(spec: ModelSpec, data: DataSplits, where: str) -> Callable[[int], nn.Module]:
    """``seed -> student`` built from its name; with ``weights``, every seed starts from that file (read and
    checked against the architecture once, here, before any training), the seed then fixing only the data order."""
    if not spec.weights:
        return lambda seed: build_arch(spec, data, seed)
    model = build_arch(spec, data, 0)
    load_model_weights(model, spec.weights, where)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def make(seed: int) -> nn.Module:
        fresh = build_arch(spec, data, seed)
        fresh.load_state_dict(state)
        return fresh
    return make


def rebuild_student(recipe: Recipe, data: DataSplits, out: Path | None = None) -> nn.Module:
    """The architecture of the recipe's student, to load saved weights into: built from its name, or the teacher
    (its ``weights``, or the finished teacher in ``<out>/teacher/``) pruned again exactly as the run pruned it."""
    spec = recipe.student
    if spec.from_teacher is None:
        return build_arch(spec, data, recipe.seed)
    from distill.plan import teacher_part

    part = teacher_part(recipe.teacher, data, recipe.seed, recipe.train) if recipe.teacher else None
    return student_maker(spec, data, ready_teacher(part, recipe, out))(recipe.seed)


def teacher_only(recipe: Recipe) -> Recipe:
    """The recipe with every student built from the teacher replaced by the teacher's plain architecture: what
    ``distill teacher`` builds, since it trains the teacher that pruning needs (the teacher's fingerprint does not
    depend on the students)."""
    if recipe.teacher is None or not any(s.from_teacher for _, s in students(recipe)):
        return recipe
    plain = recipe.teacher.model_copy(update={k: None for k in FROM_TEACHER})
    peers = {k: plain if s.from_teacher else s for k, s in (recipe.peers or {}).items()} or None
    return recipe.model_copy(update={"student": plain if recipe.student.from_teacher else recipe.student,
                                     "peers": peers})


def student_notes(plan: Plan) -> list[str]:
    """What a pruning-initialised student is, and what its scratch row means, for the report's notes."""
    spec = plan.recipe.student if plan.recipe is not None else None
    if spec is None or spec.from_teacher is None or plan.teacher is None:
        return []
    size = sum(p.numel() for p in plan.student.parameters())
    full = sum(p.numel() for p in plan.teacher.model.parameters())
    target = f"target_params {spec.target_params:,}" if spec.target_params else f"target_macs {spec.target_macs:,}"
    if spec.kwargs.get("init", "pruned") == "random":
        return [f"student: the teacher's architecture pruned to {size:,} parameters (teacher {full:,}; {target}), "
                "every weight drawn afresh from the seed (init: random), no teacher weight kept; the scratch row "
                "starts from the same random weights"]
    return [f"student: the teacher pruned to {size:,} parameters (teacher {full:,}; {target}), starting from the "
            "teacher's surviving weights (init: pruned); the scratch row is that pruned teacher fine-tuned on the "
            "labelled samples alone (prune, then fine-tune), so student minus scratch is what distillation adds "
            "to pruning"]


def teacher_trained_first(recipe: Recipe, out: Path, data: DataSplits, *, resume: bool,
                          log: Callable[[str], None]) -> Recipe:
    """``distill bench``: a teacher trained here that a student is pruned from is trained first (into
    ``<out>/teacher/``), and the recipe returned names its weights, so every run of the bench prunes that one
    trained teacher. Any other recipe is returned as it is."""
    t = recipe.teacher
    if t is None or t.weights or t.pretrained or not any(s.from_teacher for _, s in students(recipe)):
        return recipe
    from distill.plan import plan_from_recipe
    from distill.run import obtain_teacher

    plan = plan_from_recipe(teacher_only(recipe.model_copy(update={"output_dir": str(out)})), data=data)
    done = obtain_teacher(plan, resume=resume, log=log)
    return recipe.model_copy(update={"teacher": t.model_copy(update={"weights": str(done.weights), "train": None})})


def describe(spec: ModelSpec) -> str:
    """A student spec in a few words: its model name, or ``resnet32 pruned to 20,000 params (init pruned)``."""
    if spec.from_teacher is None:
        return spec.name
    target = f"{spec.target_params:,} params" if spec.target_params else f"{spec.target_macs:,} MACs"
    return f"{spec.name} pruned to {target} (init {spec.kwargs.get('init', 'pruned')})"

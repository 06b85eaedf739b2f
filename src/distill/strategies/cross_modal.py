"""``strategy: cross_modal``: the teacher and the student read different inputs of the same sample (fields of a
dict input: an image and a line-scan, an image and a 7x7 sensor, audio and video). The teacher's modality exists
only for training; the student is trained, evaluated and exported on its own modality alone, and its scratch
baseline is the same student trained on its own modality with the same labels and steps.

Training is the offline strategy's (one frozen teacher, its cache, the recipe's methods); what this strategy adds
is the guarantee that the two roles read disjoint fields, checked before anything trains.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distill.errors import DistillError
from distill.strategies.base import STRATEGIES, Log
from distill.strategies.offline import Offline

if TYPE_CHECKING:
    from distill.models import Keys
    from distill.plan import Plan
    from distill.recipe import Recipe
    from distill.run import Outcome


@STRATEGIES.register("cross_modal")
class CrossModal(Offline):
    """One teacher on its modality teaches a student on another (``teacher.inputs`` / ``student.inputs``)."""

    def check(self, recipe: Recipe) -> None:
        super().check(recipe)
        if recipe.teacher is None:
            raise DistillError("strategy cross_modal needs a 'teacher' (it reads another modality than the student)")
        check_modalities(recipe.teacher.inputs, recipe.student.inputs)

    def run(self, plan: Plan, *, resume: bool, log: Log) -> Outcome:
        if plan.teacher is None:
            raise DistillError("strategy cross_modal needs a teacher")
        check_modalities(plan.teacher.inputs, plan.student_inputs)
        if not isinstance(plan.data.input_shape, dict):
            raise DistillError(f"strategy cross_modal needs dict inputs (one field per modality); dataset "
                               f"'{plan.data.name}' has one tensor per sample")
        log(f"cross_modal: the teacher reads {_keys(plan.teacher.inputs)}, the student {_keys(plan.student_inputs)}"
            "; the student is evaluated on its own modality alone")
        return super().run(plan, resume=resume, log=log)


def check_modalities(teacher: Keys, student: Keys) -> None:
    """Both roles name the fields they read, and no field is read by both (one line if not)."""
    if teacher is None or student is None:
        missing = "teacher" if teacher is None else "student"
        raise DistillError(f"strategy cross_modal: set {missing}.inputs to the field(s) of the dict input it reads")
    shared = set(_list(teacher)) & set(_list(student))
    if shared:
        raise DistillError(f"strategy cross_modal: teacher and student both read {sorted(shared)}; each role reads "
                           "its own modality")


def _list(keys: Keys) -> list[str]:
    return [keys] if isinstance(keys, str) else list(keys or [])


def _keys(keys: Keys) -> str:
    return ", ".join(repr(k) for k in _list(keys))

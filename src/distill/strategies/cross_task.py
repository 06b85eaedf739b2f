"""``strategy: cross_task``: a teacher trained for another task (other classes: ``teacher.classes``) teaches a
student for this one. Class distributions cannot be compared across class sets, so the teacher's knowledge
travels through its features and their relations (feature and relation methods: fitnet, at, rkd, pkt, sp, crd,
irg, hkd, ...), and the student's own head learns this task's classes from its labels (``ce``).

``finetune: true`` adds the transfer-learning baseline: the teacher's own network, its head replaced for this task,
fine-tuned on the labels (row ``finetuned``).

The teacher is evaluated on nothing here (its classes are not this task's): the report has no teacher row and no
agreement column. Everything else is the offline strategy's (the teacher frozen and live, the scratch baseline,
resume).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from distill.errors import DistillError
from distill.strategies.base import STRATEGIES, Log
from distill.strategies.offline import Offline
from distill.types import Needs

if TYPE_CHECKING:
    from torch import nn

    from distill.plan import Plan
    from distill.recipe import Recipe
    from distill.run import Trained


@STRATEGIES.register("cross_task")
class CrossTask(Offline):
    """A teacher of another task (its own ``classes``) teaches through feature and relation methods."""

    same_task = False

    def __init__(self, unlabelled: bool = True, finetune: bool = False) -> None:
        self.unlabelled, self.finetune = unlabelled, finetune

    @property
    def labelled_only(self) -> bool:  # type: ignore[override]
        """``unlabelled: false``: the student sees the labelled samples alone, batch for batch the scratch
        student's, the teacher's relations acting on them (else the whole split: the transfer set too)."""
        return not self.unlabelled

    def check(self, recipe: Recipe) -> None:
        super().check(recipe)
        if recipe.teacher is not None and recipe.teacher.weights is None:
            raise DistillError("strategy cross_task: the teacher must come trained for its own task (teacher.weights;"
                               " train it with `distill teacher` on a recipe for that task)")

    def check_parts(self, *, teacher: bool, teachers: list[str], peers: list[str],
                    methods: list[tuple[str, Needs, str | None]]) -> None:
        super().check_parts(teacher=teacher, teachers=teachers, peers=peers, methods=methods)
        if not teacher:
            raise DistillError("strategy cross_task needs a 'teacher' (trained for another task)")
        for i, (name, needs, _) in enumerate(methods):
            if needs.teacher and not needs.teacher_taps:
                raise DistillError(f"methods.{i} ({name}) compares the teacher's class outputs with the student's, "
                                   "which differ across tasks; strategy cross_task takes feature and relation "
                                   "methods (fitnet, at, rkd, pkt, sp, ...) plus ce")
        if not any(needs.teacher for _, needs, _ in methods):
            raise DistillError("strategy cross_task needs a method that reads the teacher's features (e.g. rkd)")

    def baselines(self, plan: Plan, *, resume: bool, log: Log, notes: list[str]) -> dict[str, Trained]:
        """``finetune``: the teacher's network with a new head for this task, every weight fine-tuned with
        cross-entropy on the labelled samples (the transfer-learning baseline), as many steps as the scratch
        student."""
        if not self.finetune or plan.teacher is None:
            return {}
        from distill.run import train_scratch
        from distill.strategies.finetune import with_new_head

        model = with_new_head(plan.teacher, plan.data, plan.seed)
        notes.append("finetuned: the teacher's network with a new head for this task, every weight fine-tuned on "
                     "the labelled samples (its size is the teacher's, not the student's)")
        return {"finetuned": train_scratch(plan, model, role="finetuned", resume=resume, log=log,
                                           inputs=plan.teacher.inputs)}

    def check_models(self, plan: Plan, frozen: nn.Module | None) -> None:
        """The student outputs this task's classes; the teacher only has to run on its inputs."""
        from distill.build import check_classes, output_classes

        check_classes(plan.data, {"student": plan.student_inputs}, student=plan.student)
        if frozen is not None:
            output_classes(frozen, plan.data, None, "teacher")

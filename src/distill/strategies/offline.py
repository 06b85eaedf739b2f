"""``strategy: offline`` (the default): one frozen teacher, pretrained or trained here first, teaches one
student (Hinton et al. 2015 and every method of ``distill.methods``); the scratch baseline trains beside it."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from distill.strategies.base import STRATEGIES, Log, Strategy

if TYPE_CHECKING:
    from torch import nn

    from distill.plan import Plan
    from distill.run import Outcome, Trained


@STRATEGIES.register("offline")
class Offline(Strategy):
    """Teacher (loaded, or trained with cross-entropy), scratch student, distilled student, report."""

    same_task = True  # the teacher as given predicts the student's classes (its report row, agreement column)
    labelled_only = False  # the student trains on the whole training split (labelled and transfer samples)

    def run(self, plan: Plan, *, resume: bool, log: Log) -> Outcome:
        from distill.pruned import student_notes
        from distill.run import describe_data, diagnose, finish, obtain_teacher, train_scratch, train_student

        data = plan.data
        log(describe_data(data))
        teacher = obtain_teacher(plan, resume=resume, log=log)
        plan, teacher = self.adapt_teacher(plan, teacher, resume=resume, log=log)
        frozen = plan.teacher.frozen(data) if plan.teacher else None
        self.check_models(plan, frozen)
        notes = diagnose(plan.methods, frozen, data, log, plan) if self.teacher_row else []
        trained: dict[str, Trained] = {}
        if frozen is not None and self.teacher_row:
            teacher.frozen = frozen
            trained["teacher"] = teacher
        if plan.compare:
            scratch = copy.deepcopy(plan.student)  # the student's initial weights, before it trains
            trained["scratch"] = train_scratch(plan, scratch, resume=resume, log=log, inputs=plan.student_inputs,
                                               notes=notes)
        notes += student_notes(plan)  # a student pruned from the teacher: what it and its scratch row are
        trained.update(self.baselines(plan, resume=resume, log=log, notes=notes))
        trained["student"] = train_student(plan, frozen, resume=resume, log=log, notes=notes,
                                           labelled_only=self.labelled_only, model=self.initial_student(plan, notes),
                                           rewrite=self.rewrite(plan, frozen))
        return finish(plan, trained, frozen if self.teacher_row else None, notes, log)

    @property
    def teacher_row(self) -> bool:
        """The teacher the students learn from predicts their classes: report row, agreement, diagnosis."""
        return self.same_task

    def adapt_teacher(self, plan: Plan, teacher: Trained, *, resume: bool, log: Log) -> tuple[Plan, Trained]:
        """The plan and teacher the students learn from, given the teacher obtained (unchanged here)."""
        return plan, teacher

    def initial_student(self, plan: Plan, notes: list[str]) -> nn.Module | None:
        """The distilled student's initial weights; None: the plan's student (as built from the recipe)."""
        return None

    def rewrite(self, plan: Plan, teacher: nn.Module | None) -> Any:
        """The rewrite of each of the student's training batches (``FitJob.rewrite``); None: the dataset's."""
        return None

    def baselines(self, plan: Plan, *, resume: bool, log: Log, notes: list[str]) -> dict[str, Trained]:
        """Further baselines beside the scratch student, by role (none here)."""
        return {}

    def check_models(self, plan: Plan, frozen: nn.Module | None) -> None:
        """Teacher and student output the dataset's classes (one line naming the mismatch if not)."""
        from distill.build import check_classes

        check_classes(plan.data, {"student": plan.student_inputs}, **({"teacher": frozen} if frozen else {}),
                      student=plan.student)


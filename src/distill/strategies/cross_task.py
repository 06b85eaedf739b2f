"""``strategy: cross_task``: a teacher trained for another task (other classes: ``teacher.classes``, or another
domain: ``teacher.resize``) teaches a student for this one.

As given, the teacher's class distributions cannot be compared with this task's, so its knowledge travels through
its features and their relations (feature and relation methods: fitnet, at, rkd, pkt, sp, crd, irg, hkd, ...),
and the student's own head learns this task's classes from its labels (``ce``). The report has no teacher row.

``adapt: finetune`` first adapts the teacher, as task-specific distillation does (DistilBERT, TinyBERT): its
network gets a new head for this task and every weight is fine-tuned on the labelled samples (role ``teacher``,
as many steps as the scratch student); the students then learn from the adapted teacher, through every method,
logit methods (kd, ...) included, on the whole training split (the unlabelled samples are the transfer set).
The adapted teacher predicts this task's classes: it has a report row and an agreement column.

Baselines beside the scratch student: ``finetune: true``, the teacher's network fine-tuned (row ``finetuned``,
what ``adapt: finetune`` reports as its teacher); ``student_source: PATH``, the student's architecture trained on
the source task (its weights at PATH), its head replaced and every weight fine-tuned on the labelled samples
(row ``student_finetuned``: plain transfer learning at the student's size).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Literal

from distill.errors import DistillError
from distill.strategies.base import STRATEGIES, Log
from distill.strategies.offline import Offline
from distill.types import Needs

if TYPE_CHECKING:
    from torch import nn

    from distill.plan import Plan
    from distill.recipe import Recipe
    from distill.run import Trained

_ADAPT = ("none", "finetune")


@STRATEGIES.register("cross_task")
class CrossTask(Offline):
    """A teacher of another task (its own ``classes``) teaches through feature and relation methods, or, adapted
    by fine-tuning (``adapt: finetune``), through any method."""

    same_task = False

    def __init__(self, unlabelled: bool = True, finetune: bool = False, adapt: Literal["none", "finetune"] = "none",
                 student_source: str | None = None, student_init: Literal["fresh", "source"] = "fresh") -> None:
        if adapt not in _ADAPT:
            raise DistillError(f"strategy cross_task: adapt must be one of {', '.join(_ADAPT)}, got {adapt!r}")
        if adapt == "finetune" and finetune:
            raise DistillError("strategy cross_task: adapt: finetune reports the fine-tuned teacher as its teacher "
                               "row; finetune: true would train the same model again (drop it)")
        if student_init == "source" and not student_source:
            raise DistillError("strategy cross_task: student_init: source needs student_source (the student's "
                               "weights from the source task)")
        self.unlabelled, self.finetune, self.adapt, self.student_source = unlabelled, finetune, adapt, student_source
        self.student_init = student_init

    @property
    def labelled_only(self) -> bool:  # type: ignore[override]
        """``unlabelled: false``: the student sees the labelled samples alone, batch for batch the scratch
        student's, the teacher's relations acting on them (else the whole split: the transfer set too)."""
        return not self.unlabelled

    @property
    def adapts_teacher(self) -> bool:
        """``adapt: finetune``: the run's ``teacher/`` holds the teacher's network fine-tuned for this task."""
        return self.adapt == "finetune"

    @property
    def teacher_row(self) -> bool:
        """Only the adapted teacher predicts this task's classes."""
        return self.adapts_teacher

    def check(self, recipe: Recipe) -> None:
        super().check(recipe)
        if recipe.teacher is not None and recipe.teacher.weights is None:
            raise DistillError("strategy cross_task: the teacher must come trained for its own task (teacher.weights;"
                               " train it with `distill teacher` on a recipe for that task)")
        if recipe.data.labels_per_class == 0 and (self.adapt == "finetune" or self.finetune or self.student_source):
            raise DistillError("strategy cross_task: adapt: finetune, finetune and student_source fine-tune on this "
                               "task's labels, and data.labels_per_class is 0")

    def check_parts(self, *, teacher: bool, teachers: list[str], peers: list[str],
                    methods: list[tuple[str, Needs, str | None]]) -> None:
        super().check_parts(teacher=teacher, teachers=teachers, peers=peers, methods=methods)
        if not teacher:
            raise DistillError("strategy cross_task needs a 'teacher' (trained for another task)")
        for i, (name, needs, _) in enumerate(methods):
            if needs.teacher and not needs.teacher_taps and self.adapt == "none":
                raise DistillError(f"methods.{i} ({name}) compares the teacher's class outputs with the student's, "
                                   "which differ across tasks; strategy cross_task takes feature and relation "
                                   "methods (fitnet, at, rkd, pkt, sp, ...) plus ce, or any method with "
                                   "adapt: finetune (the teacher fine-tuned on this task first)")
        if not any(needs.teacher for _, needs, _ in methods):
            raise DistillError("strategy cross_task needs a method that reads the teacher (e.g. rkd)")

    def adapt_teacher(self, plan: Plan, teacher: Trained, *, resume: bool, log: Log) -> tuple[Plan, Trained]:
        """``adapt: finetune``: the teacher's network with a new head, fine-tuned on the labelled samples, becomes
        the teacher (frozen, its preprocessing kept); its new weights change the cache fingerprint."""
        if self.student_source:
            self._source_student(plan)  # its file and architecture, before anything trains
        if self.adapt == "none" or plan.teacher is None:
            return plan, teacher
        from distill.run import train_scratch
        from distill.strategies.finetune import with_new_head

        _need_labels(plan)
        model = with_new_head(plan.teacher, plan.data, plan.seed)
        log("teacher: adapting to this task (new head, every weight fine-tuned on the labelled samples)")
        adapted = train_scratch(plan, model, role="teacher", resume=resume, log=log, inputs=plan.teacher.inputs)
        spec = {**plan.teacher.spec, "adapted": {"finetune": "labelled samples", "seed": plan.seed}}
        part = replace(plan.teacher, model=model.model, spec=spec, weights=adapted.weights, train=None)
        return replace(plan, teacher=part), replace(adapted, model=model.model)

    def initial_student(self, plan: Plan, notes: list[str]) -> nn.Module | None:
        """``student_init: source``: the distilled student starts where ``student_finetuned`` starts (its
        source-task weights, a new head), so the teacher's contribution is what it adds to plain fine-tuning."""
        if self.student_init != "source" or not self.student_source:
            return None
        notes.append(f"student: starts from its source-task weights ({self.student_source}) with a new head")
        return self._source_student(plan)

    def _source_student(self, plan: Plan) -> nn.Module:
        """The student's architecture with the ``student_source`` weights and a new head for this task."""
        from distill.build import resolve_path
        from distill.strategies.finetune import from_source

        path = resolve_path(str(self.student_source))
        if not path.is_file():
            raise DistillError(f"strategy.student_source: weights file not found: {self.student_source}")
        return from_source(plan.student, str(path), plan.data.num_classes, plan.seed)

    def baselines(self, plan: Plan, *, resume: bool, log: Log, notes: list[str]) -> dict[str, Trained]:
        """``finetune``: the teacher's network with a new head for this task, every weight fine-tuned with
        cross-entropy on the labelled samples; ``student_source``: the student's architecture from its
        source-task weights, likewise. Both as many steps as the scratch student."""
        from distill.run import train_scratch
        from distill.strategies.finetune import with_new_head

        out: dict[str, Trained] = {}
        if self.finetune and plan.teacher is not None:
            _need_labels(plan)
            notes.append("finetuned: the teacher's network with a new head for this task, every weight fine-tuned "
                         "on the labelled samples (its size is the teacher's, not the student's)")
            out["finetuned"] = train_scratch(plan, with_new_head(plan.teacher, plan.data, plan.seed),
                                             role="finetuned", resume=resume, log=log, inputs=plan.teacher.inputs)
        if self.student_source:
            _need_labels(plan)
            model = self._source_student(plan)
            notes.append(f"student_finetuned: the student's architecture trained on the source task "
                         f"({self.student_source}), a new head, every weight fine-tuned on the labelled samples")
            out["student_finetuned"] = train_scratch(plan, model, role="student_finetuned", resume=resume, log=log,
                                                     inputs=plan.student_inputs)
        return out

    def check_models(self, plan: Plan, frozen: nn.Module | None) -> None:
        """The student (and an adapted teacher) output this task's classes; the teacher only has to run."""
        from distill.build import check_classes, output_classes

        if self.teacher_row:
            return super().check_models(plan, frozen)
        check_classes(plan.data, {"student": plan.student_inputs}, student=plan.student)
        if frozen is not None:
            output_classes(frozen, plan.data, None, "teacher")


def _need_labels(plan: Plan) -> None:
    if len(plan.data.labelled_train()) == 0:
        raise DistillError("strategy cross_task: fine-tuning needs labels of this task (labels_per_class is 0)")

"""``strategy: born_again``: born-again networks (Furlanello et al. 2018). Generation 0 is the student's
architecture trained with cross-entropy alone (the scratch student); generation g+1, the same architecture from
a fresh initialisation, distils from generation g (frozen) with the recipe's methods, for ``generations``
generations. Each generation is a complete role in ``<output_dir>/gen<g>/`` with its own checkpoints (and its
teacher's cache in ``<output_dir>/gen<g>/cache``), so a killed run resumes inside the generation it was in; the
report has a row per generation.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import TYPE_CHECKING

from distill.errors import DistillError
from distill.strategies.base import STRATEGIES, Log, Strategy, refuse_named
from distill.types import Needs

if TYPE_CHECKING:
    from torch import nn

    from distill.plan import Plan
    from distill.run import Outcome, Trained


@STRATEGIES.register("born_again")
class BornAgain(Strategy):
    """``generations`` student generations after generation 0 (the paper reports up to 3 or more)."""

    takes_teacher = False

    def __init__(self, generations: int = 3) -> None:
        if generations < 1:
            raise DistillError(f"strategy born_again: generations must be >= 1, got {generations}")
        self.generations = generations

    def check_parts(self, *, teacher: bool, teachers: list[str], peers: list[str],
                    methods: list[tuple[str, Needs, str | None]]) -> None:
        if teacher or teachers or peers:
            raise DistillError("strategy born_again trains its own teachers (generation g teaches g+1): "
                               "remove 'teacher'")
        refuse_named(methods, "born_again")
        if not any(needs.teacher for _, needs, _ in methods):
            raise DistillError("strategy born_again needs a method that reads the teacher (e.g. kd); "
                               "with cross-entropy alone every generation is a scratch student")

    def run(self, plan: Plan, *, resume: bool, log: Log) -> Outcome:
        from distill.build import check_classes
        from distill.plan import TeacherPart
        from distill.run import describe_data, finish, train_scratch, train_student

        data = plan.data
        log(describe_data(data))
        check_classes(data, {"student": plan.student_inputs}, student=plan.student)
        notes = [f"born_again: gen0 is the scratch student; gen g+1 ({self.generations} generations) has the same "
                 "architecture, a fresh initialisation, and distils from gen g"]
        trained: dict[str, Trained] = {}
        trained["gen0"] = train_scratch(plan, copy.deepcopy(plan.student), role="scratch", resume=resume,
                                        log=log, inputs=plan.student_inputs, notes=notes)
        identity = {**plan.identity, "strategy": {"name": "born_again"}}  # adding generations keeps the old ones
        for g in range(1, self.generations + 1):
            prev = trained[f"gen{g - 1}"].model
            part = TeacherPart(prev, {"born_again_generation": g - 1}, inputs=plan.student_inputs)
            plan_g = replace(plan, teacher=part, identity=identity)
            teacher = part.frozen(data)
            log(f"gen{g}: distilling from gen{g - 1}")
            trained[f"gen{g}"] = train_student(plan_g, teacher, resume=resume, log=log, role=f"gen{g}",
                                               model=self._fresh(plan, g), methods=copy.deepcopy(plan.methods),
                                               cache_plan=replace(plan_g, out=plan.out / f"gen{g}"))
        return finish(plan, trained, None, notes, log, roles={"scratch": "gen0", "student": f"gen{self.generations}"})

    @staticmethod
    def _fresh(plan: Plan, g: int) -> nn.Module:
        """Generation g's initial weights: the student built from seed + g (the same as the student's initial
        weights when the plan cannot rebuild it, a module given from Python)."""
        return plan.fresh_student(plan.seed + g) if plan.fresh_student else copy.deepcopy(plan.student)

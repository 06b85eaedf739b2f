"""``strategy: multi_teacher``: several teachers of any architectures (each pretrained or trained here, each
with its own preprocessing and input keys) teach one student.

Logit methods that name no teacher read the per-sample ensemble of all teachers (``distill.strategies.ensemble``:
mean, fixed, confidence or entropy weights). A method entry may name one teacher (``teacher: cnn``): it then
reads that teacher alone, its logits or its features (taps by module path on that teacher), which also gives
"one KD term per teacher". Every teacher whose logits suffice is read from its own cache (one per teacher,
each fingerprinted with that teacher's weights), the others run live.
"""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from distill.errors import DistillError
from distill.strategies.base import STRATEGIES, Log, Strategy
from distill.strategies.ensemble import EnsembleModel, Targets, check_weighting
from distill.types import Needs

if TYPE_CHECKING:
    from distill.data import DataSplits
    from distill.models import FrozenTeacher
    from distill.plan import Plan
    from distill.run import Outcome


@STRATEGIES.register("multi_teacher")
class MultiTeacher(Strategy):
    """Several teachers, ensembled per sample (``weighting``: mean | fixed | confidence | entropy; ``weights``
    for fixed; ``average``: probs | logits; ``T``: the temperature of the probability average, default the
    first method's ``T``, else 1)."""

    def __init__(self, weighting: str = "mean", weights: list[float] | None = None, average: str = "probs",
                 T: float | None = None) -> None:
        check_weighting(weighting, weights, average)
        if T is not None and not T > 0:
            raise DistillError(f"strategy.T must be positive, got {T}")
        self.weighting, self.weights, self.average, self.T = weighting, weights, average, T

    def check_parts(self, *, teacher: bool, teachers: list[str], peers: list[str],
                    methods: list[tuple[str, Needs, str | None]]) -> None:
        if teacher:
            raise DistillError("strategy multi_teacher reads 'teachers' (a mapping name -> teacher); "
                               "move 'teacher' into it")
        if peers:
            raise DistillError("'peers' (students trained together) needs strategy: mutual")
        if len(teachers) < 2:
            raise DistillError(f"strategy multi_teacher needs at least two teachers under 'teachers', "
                               f"got {len(teachers)}")
        check_weighting(self.weighting, self.weights, self.average, len(teachers))
        for i, (name, needs, named) in enumerate(methods):
            if named is not None and named not in teachers:
                raise DistillError(f"methods.{i}.teacher: no teacher named {named!r} "
                                   f"(teachers: {', '.join(teachers)})")
            if named is None and (needs.teacher_taps or needs.live_teacher):
                raise DistillError(f"methods.{i} ({name}) reads a teacher's features: name the teacher it taps "
                                   f"with 'teacher: <name>' (one of {', '.join(teachers)})")

    def run(self, plan: Plan, *, resume: bool, log: Log) -> Outcome:
        from distill.run import Trained, describe_data, diagnose, finish, obtain_teacher, train_role, train_scratch

        data = plan.data
        log(describe_data(data))
        check_teacher_classes(data, plan)  # before any teacher trains here
        trained: dict[str, Trained] = {}
        frozen: dict[str, FrozenTeacher] = {}
        for name, part in plan.teachers.items():
            t = obtain_teacher(plan, part=part, role=f"teachers/{name}", resume=resume, log=log)
            t.frozen = frozen[name] = part.frozen(data)
            trained[f"teacher:{name}"] = t
        ensemble = EnsembleModel(frozen, self.weighting, self._fixed(), self.average, self._temperature(plan))
        trained = {"teacher": Trained(ensemble, frozen=ensemble), **trained}
        notes = diagnose(plan.methods, ensemble, data, log, plan)
        notes.append(self._describe(plan))
        if plan.compare:
            trained["scratch"] = train_scratch(plan, copy.deepcopy(plan.student), resume=resume, log=log,
                                               inputs=plan.student_inputs, notes=notes)
        caches = {n: self._cache(plan, n, frozen[n], log) for n in frozen}
        targets = Targets(ensemble, caches, {n: plan.methods.taps_of(n) for n in frozen})
        # with augmentation, cached teachers hold `views` views per sample: the loader cycles through those
        views = next((c.views for c in caches.values() if c is not None), plan.cache.views)
        trained["student"] = train_role("student", plan, plan.student, plan.methods, plan.train, data.train,
                                        resume=resume, log=log, inputs=plan.student_inputs, targets=targets,
                                        views=views)
        return finish(plan, trained, ensemble, notes, log)

    def _fixed(self) -> torch.Tensor | None:
        return None if self.weights is None else torch.tensor(self.weights, dtype=torch.float32)

    def _temperature(self, plan: Plan) -> float:
        if self.T is not None:
            return float(self.T)
        return float(next((m.T for m in plan.methods.methods if hasattr(m, "T")), 1.0))

    def _describe(self, plan: Plan) -> str:
        extra = f" {self.weights}" if self.weights else ""
        avg = f"softened distributions at T={self._temperature(plan):g}" if self.average == "probs" else "logits"
        return (f"multi_teacher: {len(plan.teachers)} teachers ({', '.join(plan.teachers)}), per-sample "
                f"'{self.weighting}'{extra} weights, ensemble = weighted mean of their {avg}")

    def _cache(self, plan: Plan, name: str, teacher: FrozenTeacher, log: Log) -> Any:
        """Teacher ``name``'s own cache (every logit: ensembling needs them all), or None to run it live."""
        from distill.cache import prepare_cache
        from distill.methods import MethodSet

        methods = MethodSet([m for m in plan.methods.methods if m.teacher_key in (None, name)])
        cache = plan.cache.model_copy(update={"k": "all"})
        if plan.cache.path is not None:  # a place the user chose: one sub-folder per teacher
            sub = replace(plan, cache=cache.model_copy(update={"path": f"{plan.cache.path}/{name}"}))
        else:  # the default place, <output_dir>/teachers/<name>/cache (rebuilt when stale)
            sub = replace(plan, cache=cache, out=plan.out / "teachers" / name)
        sub = replace(sub, teacher=plan.teachers[name], methods=methods)
        return prepare_cache(sub, teacher, log=lambda m: log(f"[{name}] {m}"))


def check_teacher_classes(data: DataSplits, plan: Plan) -> None:
    """Every teacher and the student output the same number of classes, the dataset's (one line if not)."""
    from distill.build import check_classes, output_classes

    counts = {n: output_classes(p.model, data, p.inputs, f"teacher {n}") for n, p in plan.teachers.items()}
    if len(set(counts.values())) > 1:
        raise DistillError("teachers disagree on the number of classes: "
                           + ", ".join(f"{n} outputs {c}" for n, c in counts.items()))
    check_classes(data, {"student": plan.student_inputs}, student=plan.student)
    n = next(iter(counts.values()))
    if n != data.num_classes:
        raise DistillError(f"the teachers output {n} classes but dataset '{data.name}' has {data.num_classes}")

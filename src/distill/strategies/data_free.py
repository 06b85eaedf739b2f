"""``strategy: data_free``: distillation without any training input. Only the pretrained teacher, its input shape
and its preprocessing are used: a generator (``distill.strategies.generator``) synthesises batches from noise,
trained against the frozen teacher with DAFL's, DeepInversion's and DFAD/ZSKT's losses
(``distill.strategies.synthesis``), and the student distils from the teacher on those batches with the recipe's
methods (DAFL: ``kd`` at T=1). The recipe's dataset provides validation and test data for evaluation only;
its training split is never read.

Generator and student train as one module through the engine's one loop (role ``data_free``: one checkpoint
holds both, the generator with its own optimizer and schedule; kill and ``--resume`` restore both). The
student's weights land in ``<output_dir>/student/``, the generator's in ``<output_dir>/generator/``, and the
report shows generated samples per class and the class histogram of the teacher's predictions on them.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from pydantic import Field

from distill.errors import DistillError
from distill.recipe import OptimSpec, ScheduleSpec, _Strict, validate_part
from distill.strategies.base import STRATEGIES, Log, Strategy
from distill.strategies.generator import LatentCodes, build_generator
from distill.strategies.samples import save_parts, show_samples
from distill.strategies.synthesis import DataFreeMethods, GeneratorLosses, Synthesis, bn_layers
from distill.taps import last_linear
from distill.types import Needs

if TYPE_CHECKING:
    from distill.plan import Plan
    from distill.recipe import Recipe
    from distill.run import Outcome, Trained


class GeneratorSpec(_Strict):
    """``strategy.generator``: the generator's size and its own optimizer and schedule."""

    latent: int = Field(100, ge=1)
    width: int = Field(128, ge=2)
    optimizer: OptimSpec = OptimSpec(name="adam", lr=1e-3, weight_decay=0.0)
    schedule: ScheduleSpec = ScheduleSpec(name="constant")


class LossSpec(_Strict):
    """``strategy.losses``: weights of the generator's terms (see ``distill.strategies.synthesis``)."""

    one_hot: float = Field(1.0, ge=0)
    activation: float = Field(0.1, ge=0)
    entropy: float = Field(5.0, ge=0)
    bn: float = Field(0.0, ge=0)
    bn_first: float = Field(10.0, ge=0)
    smoothness: float = Field(0.0, ge=0)
    adversarial: float = Field(0.0, ge=0)


@STRATEGIES.register("data_free")
class DataFree(Strategy):
    """``steps`` generated batches per epoch (of ``data.batch_size``); ``generator`` and ``losses`` as in
    ``GeneratorSpec`` and ``LossSpec``; ``feature``: the teacher tap whose activations DAFL's activation term
    rewards (default: the input of the teacher's last Linear layer, its penultimate features); ``student_steps``:
    steps per generator update (1: DAFL, every step; DFAD: 5)."""

    def __init__(self, steps: int = 120, generator: dict[str, Any] | None = None,
                 losses: dict[str, Any] | None = None, feature: str | None = None, student_steps: int = 1) -> None:
        for key, value in (("steps", steps), ("student_steps", student_steps)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DistillError(f"strategy data_free: {key} must be an integer >= 1, got {value!r}")
        self.steps, self.generator, self.losses, self.feature = steps, generator, losses, feature
        self.student_steps = student_steps
        self._gen = validate_part(GeneratorSpec, generator or {}, "strategy.generator")
        self._losses = GeneratorLosses(**validate_part(LossSpec, losses or {}, "strategy.losses").model_dump())

    def dry_copy(self) -> DataFree:
        """One generated batch per epoch: the dry run only needs every part to run once."""
        rehearsal = copy.deepcopy(self)
        rehearsal.steps = 1
        return rehearsal

    def check(self, recipe: Recipe) -> None:
        super().check(recipe)
        _refuse(untrained=recipe.teacher is not None and recipe.teacher.weights is None,
                augmented=recipe.data.augment is not None)

    def check_parts(self, *, teacher: bool, teachers: list[str], peers: list[str],
                    methods: list[tuple[str, Needs, str | None]]) -> None:
        if not teacher and not teachers:
            raise DistillError("strategy data_free distils from a pretrained teacher: add a 'teacher' section")
        super().check_parts(teacher=teacher, teachers=teachers, peers=peers, methods=methods)
        for i, (name, needs, _) in enumerate(methods):
            if needs.student_taps or needs.teacher_taps:
                raise DistillError(f"methods.{i} ({name}) taps features; strategy data_free takes logit methods "
                                   "(e.g. kd, dkd, dist)")
            if not needs.teacher:
                raise DistillError(f"methods.{i} ({name}) learns from labels, and strategy data_free has none: "
                                   "use methods that read the teacher (e.g. kd)")

    def run(self, plan: Plan, *, resume: bool, log: Log) -> Outcome:
        from distill.build import check_classes
        from distill.run import Trained, finish, train_role

        synth = self.synthesis(plan)
        check_classes(plan.data, {"student": plan.student_inputs}, teacher=synth.teacher, student=plan.student)
        data, part = plan.data, plan.teacher
        assert part is not None
        log(f"data: {data.name}: no training data (data-free); val {len(data.val)} / test {len(data.test)} for "
            f"evaluation only; the generator makes {self.steps} batches of {plan.batch_size} per epoch")
        notes = [f"data_free: the student never saw a training input: it learned from the teacher on "
                 f"{self.steps} generated batches of {plan.batch_size} per epoch; the validation and test data "
                 "were used for evaluation only"]
        trained: dict[str, Trained] = {"teacher": Trained(part.model, weights=part.weights, frozen=synth.teacher)}
        if plan.compare:  # nothing to train a scratch student on: what the student is without a teacher
            trained["scratch"] = Trained(copy.deepcopy(plan.student), inputs=plan.student_inputs)
            notes.append("scratch student: no training data, so it is the untrained initial student")
        gen = self._gen
        codes = LatentCodes(self.steps * plan.batch_size, gen.latent, plan.seed)
        groups = [(list(synth.generator.parameters()), gen.optimizer, gen.schedule)]
        done = train_role("data_free", plan, synth, DataFreeMethods(plan.methods, synth), plan.train, codes,
                          teacher=synth.teacher, resume=resume, log=log, evaluate=_of_student(plan),
                          groups=groups)
        paths = save_parts(plan, synth, gen.latent, gen.width)
        notes += show_samples(plan, synth, gen.latent)
        trained["student"] = Trained(plan.student, done.history, paths["student"], inputs=plan.student_inputs)
        return finish(plan, trained, synth.teacher, notes, log)

    def synthesis(self, plan: Plan) -> Synthesis:
        """Generator, student and frozen teacher for ``plan``; refuses what cannot run (before any training)."""
        part = plan.teacher
        if part is None:
            raise DistillError("strategy data_free distils from a pretrained teacher: give a teacher")
        _refuse(untrained=part.train is not None, augmented=plan.augment is not None and not plan.augment.identity)
        shape = plan.data.shape_for(plan.student_inputs)
        if shape is None or isinstance(plan.data.input_shape, dict) or part.inputs is not None:
            raise DistillError("strategy data_free generates one input tensor; this data has dict inputs")
        frozen = part.frozen(plan.data)
        w = self._losses
        if w.bn and not bn_layers(frozen.model):
            raise DistillError(f"strategy data_free: losses.bn matches the teacher's BatchNorm statistics "
                               f"(DeepInversion), but the teacher ({type(frozen.model).__name__}) has no "
                               "BatchNorm layer: set losses.bn: 0")
        head = last_linear(frozen.model)
        feature = self.feature or (f"{head}:input" if w.activation and head else None)
        if w.activation and feature is None:
            raise DistillError("strategy data_free: losses.activation rewards the teacher's penultimate features, "
                               "but the teacher has no Linear layer: name a tap with strategy.feature, or set "
                               "losses.activation: 0")
        generator = build_generator(tuple(shape), self._gen.latent, self._gen.width, plan.seed)
        return Synthesis(generator, plan.student, frozen, w, feature, self.student_steps)


def _refuse(*, untrained: bool, augmented: bool) -> None:
    """What neither door (recipe or Python) can run: a teacher without weights, augmentation of real inputs."""
    if untrained:
        raise DistillError("strategy data_free distils from a pretrained teacher: give teacher.weights "
                           "(a teacher trained here would need the training data)")
    if augmented:
        raise DistillError("data.augment transforms real training inputs; strategy data_free has none: "
                           "remove data.augment")


def _of_student(plan: Plan) -> Any:
    """The default per-epoch evaluation, of the student inside the generator-and-student module."""
    from distill.run import epoch_eval

    evaluate = epoch_eval(plan.data, plan.eval_batch_size, plan.student_inputs)
    return lambda synth: evaluate(synth.student)

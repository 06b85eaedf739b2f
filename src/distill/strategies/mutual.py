"""``strategy: mutual``: deep mutual learning (Zhang et al. 2018, DML). Two or more students train together
from scratch, no pretrained teacher: each minimises its own cross-entropy plus the recipe's distillation
methods towards every other student's current prediction, detached, averaged over the others
(the paper's ``L_k = CE_k + 1/(K-1) sum_{j != k} KL(p_j || p_k)`` is ``methods: [{name: kd, T: 1, alpha: 1,
beta: 1}]``, the default of ``recipes/mnist1d-mutual.yaml``; any logit method works in its place).

The students are the recipe's ``student`` plus its ``peers`` (a mapping name -> model), or, without peers,
``copies`` students of the ``student`` architecture, each from its own initialisation (seed, seed+1, ...).
They train as one module in the engine's one loop (one checkpoint holding every student and the optimizer
state of each student's parameters; precision and DDP as for any student); the paper updates the students in
turn within a step, here they step together on the same batch (the same gradients for two students up to the
order of the two updates). Every student has its own scratch baseline (same architecture and initial weights,
cross-entropy alone) when ``compare`` is on.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from distill.errors import DistillError
from distill.methods import MethodSet
from distill.models import Keys, as_logits, feed
from distill.strategies.base import STRATEGIES, Log, Strategy, refuse_named
from distill.types import Batch, LossOutput, ModelOutput, Needs, StepContext

if TYPE_CHECKING:
    from distill.plan import Plan
    from distill.run import Outcome, Trained


class Cohort(nn.Module):
    """The students as one module: ``forward`` stacks their logits (K, B, C) (each reads its own input keys)."""

    reads_whole_input = True

    def __init__(self, members: dict[str, nn.Module], inputs: dict[str, Keys]) -> None:
        super().__init__()
        self.members = nn.ModuleDict(members)
        self.inputs = inputs

    def forward(self, x: Any) -> Tensor:
        return torch.stack([as_logits(feed(m, x, self.inputs.get(n), n)) for n, m in self.members.items()])


class PeerMethods(MethodSet):
    """The recipe's methods applied to each student with every other student's detached logits as its
    teacher, averaged over the others; terms are named ``<student>.<term>``. Each student has its own copy of
    the methods (their state, if any, is per student)."""

    def __init__(self, methods: MethodSet, names: list[str]) -> None:
        super().__init__([])
        self.names = names
        self.per = nn.ModuleList([copy.deepcopy(methods) for _ in names])

    @property
    def needs_teacher(self) -> bool:  # the peers are the teachers: the engine fetches nothing
        return False

    def forward(self, s: ModelOutput, t: ModelOutput | None, batch: Batch, ctx: StepContext) -> LossOutput:
        logits = s.logits  # (K, B, C)
        k = logits.shape[0]
        total: Tensor | None = None
        terms: dict[str, Tensor] = {}
        for i, (name, methods) in enumerate(zip(self.names, self.per)):
            for j in range(k):
                if j == i:
                    continue
                out = methods(ModelOutput(logits[i]), ModelOutput(logits[j].detach()), batch, ctx)
                loss = out.loss / (k - 1)
                total = loss if total is None else total + loss
                for term, value in out.terms.items():
                    key = f"{name}.{term}"
                    terms[key] = terms.get(key, 0.0) + value / (k - 1)
        assert total is not None
        return LossOutput(total, terms)

    def setup(self, ctx: Any) -> None:
        for methods in self.per:
            methods.setup(ctx)


@STRATEGIES.register("mutual")
class Mutual(Strategy):
    """Deep mutual learning of ``student`` and its ``peers`` (or ``copies`` students of its architecture);
    ``unlabelled``: also learn from each other on the training split's unlabelled samples (``labels_per_class``),
    else train on the labelled samples only, as the paper (and the scratch baseline) does."""

    takes_teacher = False

    def __init__(self, copies: int = 2, unlabelled: bool = True) -> None:
        if copies < 2:
            raise DistillError(f"strategy mutual needs at least two students: copies must be >= 2, got {copies}")
        self.copies, self.unlabelled = copies, unlabelled

    def check_parts(self, *, teacher: bool, teachers: list[str], peers: list[str],
                    methods: list[tuple[str, Needs, str | None]]) -> None:
        if teacher or teachers:
            raise DistillError("strategy mutual trains students from scratch with no teacher: remove 'teacher'")
        refuse_named(methods, "mutual")
        for i, (name, needs, _) in enumerate(methods):
            if needs.student_taps or needs.teacher_taps:
                raise DistillError(f"methods.{i} ({name}) taps features; strategy mutual takes logit methods "
                                   "(e.g. ce, kd, dkd, dist)")

    def members(self, plan: Plan) -> dict[str, tuple[nn.Module, Keys]]:
        """Student name -> (module, input keys): ``student`` first, then the peers or the copies."""
        out = {"student": (plan.student, plan.student_inputs)}
        if plan.peers:
            out.update({n: (p.model, p.inputs) for n, p in plan.peers.items()})
        else:
            if plan.fresh_student is None:
                raise DistillError("strategy mutual: give the peers (students beside the student) explicitly")
            out.update({f"student{i + 1}": (plan.fresh_student(plan.seed + i), plan.student_inputs)
                        for i in range(1, self.copies)})
        if len(out) < 2:
            raise DistillError("strategy mutual needs at least two students (a student and one peer)")
        return out

    def run(self, plan: Plan, *, resume: bool, log: Log) -> Outcome:
        from distill.build import check_classes
        from distill.run import describe_data, finish, train_role, train_scratch, training_split

        data = plan.data
        log(describe_data(data))
        members = self.members(plan)
        check_classes(data, {n: k for n, (_, k) in members.items()}, **{n: m for n, (m, _) in members.items()})
        notes = [f"mutual: {len(members)} students ({', '.join(members)}) trained together from scratch, each "
                 "distilling from the others' current predictions"]
        trained: dict[str, Trained] = {}
        if plan.compare:
            for n, (m, keys) in members.items():
                role = "scratch" if n == "student" else f"scratch_{n}"
                trained[role] = train_scratch(plan, copy.deepcopy(m), role=role, resume=resume, log=log,
                                              inputs=keys, notes=notes if n == "student" else None)
        cohort = Cohort({n: m for n, (m, _) in members.items()}, {n: k for n, (_, k) in members.items()})
        methods = PeerMethods(plan.methods, list(members))
        # unlabelled=False: the paper's supervised setting, the labelled samples only, for as many steps as the
        # scratch students take (with labels_per_class, the rest of the split is otherwise a shared transfer set)
        ds, size = training_split(data, labelled_only=not self.unlabelled)
        done = train_role("mutual", plan, cohort, methods, plan.train, ds, resume=resume, log=log, epoch_size=size,
                          evaluate=_cohort_eval(plan, members))
        trained.update(split_cohort(plan, done, members))
        return finish(plan, trained, None, notes, log)


def _cohort_eval(plan: Plan, members: dict[str, tuple[nn.Module, Keys]]) -> Any:
    """Per-epoch top-1 of every student: ``<name>/val_top1``, ``<name>/test_top1``, and their means."""
    from distill.run import epoch_top1

    def evaluate(_: nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        for n, (m, keys) in members.items():
            for split in ("val", "test"):
                out[f"{n}/{split}_top1"] = epoch_top1(m, getattr(plan.data, split), plan.eval_batch_size, keys)
        for split in ("val", "test"):
            out[f"{split}_top1"] = sum(out[f"{n}/{split}_top1"] for n in members) / len(members)
        return out
    return evaluate


def split_cohort(plan: Plan, done: Trained, members: dict[str, tuple[nn.Module, Keys]]) -> dict[str, Trained]:
    """One Trained per student, its weights in ``<output_dir>/<name>/model.safetensors`` and its own history
    (its per-epoch accuracies under the usual keys)."""
    from functools import partial

    from distill.engine.dist import on_main
    from distill.io import save_weights
    from distill.run import Trained

    out = {}
    for n, (m, keys) in members.items():
        path = plan.out / n / "model.safetensors"
        on_main(partial(save_weights, path, m.state_dict()))
        history = [{**{k: v for k, v in h.items() if "/" not in k},
                    **{k.split("/", 1)[1]: v for k, v in h.items() if k.startswith(f"{n}/")}} for h in done.history]
        out[n] = Trained(m, history, path, inputs=keys)
    return out

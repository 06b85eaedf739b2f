"""The Strategy contract and the strategy registry.

A strategy decides who teaches whom: which roles a run trains (teachers trained here, students, generations),
in what order, and what each student learns from. It never re-implements the training loop, checkpointing,
precision or DDP: every role it trains goes through ``distill.run.train_role`` (the engine's one loop).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from distill.errors import DistillError
from distill.registry import Registry
from distill.types import Needs

if TYPE_CHECKING:
    from distill.plan import Plan
    from distill.recipe import Recipe
    from distill.run import Outcome

STRATEGIES: Registry[type[Strategy]] = Registry("strategy")

Log = Callable[[str], None]


class Strategy:
    """Base class: subclasses set ``takes_teacher`` and implement ``run``; ``check`` refuses recipes they
    cannot run (one line, before anything is built)."""

    takes_teacher: ClassVar[bool] = True  # methods that need a teacher read the recipe's `teacher`
    adapts_teacher: bool = False  # the run's `teacher/` holds the teacher retrained for this task (cross_task)

    def check(self, recipe: Recipe) -> None:
        """Refuse a recipe this strategy cannot run (one DistillError line, before anything is built)."""
        from distill.methods import METHODS

        self.check_parts(teacher=recipe.teacher is not None, teachers=list(recipe.teachers or {}),
                         peers=list(recipe.peers or {}),
                         methods=[(m.name, _needs(METHODS.get(m.name), m.kwargs), m.teacher) for m in recipe.methods])

    def check_parts(self, *, teacher: bool, teachers: list[str], peers: list[str],
                    methods: list[tuple[str, Needs, str | None]]) -> None:
        """The check behind ``check`` for both doors: whether there is a ``teacher``, the names of ``teachers``
        and ``peers``, and each method's (name, needs, named teacher). Default: one teacher, no peers."""
        if teachers:
            raise DistillError(f"'teachers' (several teachers) needs strategy: multi_teacher, not {self.key()}")
        if peers:
            raise DistillError(f"'peers' (students trained together) needs strategy: mutual, not {self.key()}")
        refuse_named(methods, self.key())
        if self.takes_teacher and not teacher and any(needs.teacher for _, needs, _ in methods):
            raise DistillError("the recipe's methods need a teacher: add a 'teacher' section")

    def run(self, plan: Plan, *, resume: bool, log: Log) -> Outcome:  # pragma: no cover - abstract
        """Train the plan's roles through ``distill.run.train_role`` and write the report."""
        raise NotImplementedError

    def dry_copy(self) -> Strategy:
        """This strategy as the dry run (``distill.dry_run``) runs it: an independent copy, at its cheapest."""
        return copy.deepcopy(self)

    def key(self) -> str:
        """The registered name of this strategy."""
        return next((n for n in STRATEGIES.names() if STRATEGIES.get(n) is type(self)), type(self).__name__)

    def args(self) -> dict[str, Any]:
        """The strategy's arguments (each strategy keeps them as attributes of the same names)."""
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}


def _needs(cls: Any, kwargs: dict[str, Any]) -> Needs:
    """What a method built with ``kwargs`` needs (feature methods declare their taps when built); the class's
    declaration when it cannot be built (its arguments are then reported where the methods are built)."""
    try:
        return cls(**kwargs).needs
    except Exception:  # noqa: BLE001 - any constructor error is reported by build_methods, with its context
        return cls.needs


def refuse_named(methods: list[tuple[str, Needs, str | None]], strategy: str) -> None:
    """Only multi_teacher has teachers to name: a method naming one elsewhere is refused."""
    if named := [n for n, _, t in methods if t is not None]:
        raise DistillError(f"method {named[0]} names a teacher ('teacher: ...'), which only strategy multi_teacher "
                           f"has; strategy {strategy} does not")


def build_strategy(name: str, kwargs: dict[str, Any] | None = None) -> Strategy:
    """The registered strategy ``name`` built with ``kwargs`` (unknown names raise with suggestions)."""
    return STRATEGIES.get(name)(**(kwargs or {}))

"""``distill bench RECIPE --strategies a,b,...``: strategies compared as ``--methods`` compares methods.

An entry is a strategy name with optional arguments, ``name:key=value:key=value`` (values parsed as YAML; for the
recipe's own strategy they update the recipe's arguments):
``multi_teacher:weighting=entropy``, ``born_again:generations=2``, ``mutual:copies=3``. ``offline:teacher=cnn``
distils from one named teacher of a multi-teacher recipe alone (the single-teacher baselines of an ensemble).
Teachers trained here are trained once (the recipe's seed) and loaded by every run; for every seed the scratch
student trains once, then each strategy runs as ``distill run`` would (compare off) into
``<output_dir>/bench/<entry>/seed<k>/``. Every model a strategy trains is a row (``mutual:student2``,
``born_again:gen2``); its distilled ``student`` is the row named after the entry.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from distill.bench import _record, _tagged
from distill.bench_write import Row, write_bench
from distill.build import load_data, output_classes
from distill.data import DataSplits
from distill.errors import DistillError
from distill.io import first_line
from distill.plan import plan_from_recipe
from distill.recipe import Recipe, parse_value, recipe_from_dict
from distill.run import Trained, execute, obtain_teacher, train_scratch
from distill.strategies import STRATEGIES

Log = Callable[[str], None]


def parse_strategies(text: str) -> list[tuple[str, str, dict[str, Any]]]:
    """(label, strategy name, arguments) per comma-separated entry; unknown strategies raise."""
    entries = []
    for label in dict.fromkeys(e.strip() for e in text.split(",") if e.strip()):
        name, *pairs = label.split(":")
        STRATEGIES.get(name)
        kwargs = {}
        for pair in pairs:
            key, eq, value = pair.partition("=")
            if not eq or not key:
                raise DistillError(f"--strategies: {label!r}: arguments are key=value after ':' "
                                   "(e.g. multi_teacher:weighting=entropy)")
            kwargs[key] = parse_value(value)
        entries.append((label, name, kwargs))
    if not entries:
        raise DistillError("--strategies: give a comma-separated list, e.g. offline,mutual,born_again")
    return entries


def variant(recipe: Recipe, name: str, kwargs: dict[str, Any], seed: int, out: Path,
            caches: Path | None = None) -> Recipe:
    """The recipe of one strategy run: its strategy, seed and folder; teachers it does not take removed.
    ``caches``: a folder of teacher caches shared by every run (``<caches>/<teacher name>``), unless the recipe
    sets ``cache.path`` itself."""
    raw = recipe.model_dump(mode="json", exclude_none=True)
    kwargs = dict(kwargs)
    one = kwargs.pop("teacher", None) if name == "offline" else None
    if one is not None:
        teachers = raw.pop("teachers", None) or {}
        if one not in teachers:
            raise DistillError(f"--strategies: offline:teacher={one}: the recipe has no teacher named {one!r}")
        raw["teacher"] = teachers[one]
    if caches is not None and recipe.cache.path is None and name in ("offline", "multi_teacher"):
        # the teacher runs once for the whole bench: every seed and entry reads the same per-teacher cache
        raw["cache"]["path"] = str(caches if name == "multi_teacher" else caches / (one or "teacher"))
    if name in ("mutual", "born_again"):
        raw.pop("teacher", None)
        raw.pop("teachers", None)
    if name != "multi_teacher":
        raw["methods"] = [{k: v for k, v in m.items() if k != "teacher"} for m in raw["methods"]]
    if name != "mutual":
        raw.pop("peers", None)
    own = recipe.strategy.kwargs if recipe.strategy.name == name else {}  # the recipe's arguments, then the entry's
    raw.update(seed=seed, output_dir=str(out), compare=False, strategy={"name": name, **own, **kwargs})
    return recipe_from_dict(raw, source=f"--strategies {name}")


def with_trained_teachers(recipe: Recipe, root: Path, resume: bool, log: Log,
                          data: DataSplits) -> tuple[Recipe, dict[str, Trained]]:
    """The recipe with every teacher trained here replaced by its weights (trained once, into ``root``)."""
    plan = plan_from_recipe(recipe.model_copy(update={"output_dir": str(root)}), data=data)
    raw = recipe.model_dump(mode="json", exclude_none=True)
    done: dict[str, Trained] = {}
    for role, part in plan.teacher_parts().items():
        t = obtain_teacher(plan, part=part, role=role, resume=resume, log=_tagged(log, role, recipe.seed))
        t.frozen = part.frozen(plan.data)
        done[role.replace("teachers/", "teacher:")] = t
        if part.train is not None:
            section = raw["teacher"] if role == "teacher" else raw["teachers"][role.split("/", 1)[1]]
            section.pop("train", None)
            section["weights"] = str(t.weights)
    return recipe_from_dict(raw, source="bench"), done


def bench_strategies(recipe: Recipe, *, strategies: str, seeds: int = 1, resume: bool = False,
                     command: str | None = None, log: Log = print) -> Path:
    """Run every strategy entry over ``seeds`` seeds and write bench.md / .csv / .png / .json."""
    if seeds < 1:
        raise DistillError(f"--seeds must be at least 1 (got {seeds})")
    entries = parse_strategies(strategies)
    root = recipe.out / "bench"
    seed_list = list(range(recipe.seed, recipe.seed + seeds))
    for label, name, kwargs in entries:  # every entry must make a valid recipe before anything trains
        variant(recipe, name, kwargs, recipe.seed, root / label)
    data = load_data(recipe)
    recipe, teachers = with_trained_teachers(recipe, root, resume, log, data)
    rows: dict[str, Row] = {}
    other_task = not getattr(STRATEGIES.get(recipe.strategy.name), "same_task", True)
    for role, t in teachers.items():
        if other_task or output_classes(t.frozen, data, None, role) != data.num_classes:
            continue  # a teacher of another task (cross_task): its classes are not this task's, even as many
        rows[role] = Row(role)
        _record(rows[role], recipe.seed, Trained(t.frozen, t.history), data, None)
    rows["scratch"] = Row("scratch")
    for seed in seed_list:
        _bench_seed(recipe, seed, entries, rows, root, resume, log)
    command = command or f"distill bench --strategies {strategies}"
    return write_bench(root, list(rows.values()), command=command, recipe=recipe, seeds=seed_list, plans={},
                       footer=_FOOTER)


_FOOTER = ("Strategies compared: each row is one model a strategy trained (the entry's own name is its distilled "
           "student). Teachers trained here were trained once (the recipe's seed) and loaded by every run.")


def _bench_seed(recipe: Recipe, seed: int, entries: list[tuple[str, str, dict[str, Any]]], rows: dict[str, Row],
                root: Path, resume: bool, log: Log) -> None:
    data = load_data(recipe.model_copy(update={"seed": seed}))
    out = root / "scratch" / f"seed{seed}"
    base = plan_from_recipe(recipe.model_copy(update={"seed": seed, "output_dir": str(out)}), data=data)
    scratch = train_scratch(base, base.student, resume=resume, log=_tagged(log, "scratch", seed),
                            inputs=base.student_inputs)
    _record(rows["scratch"], seed, scratch, data, base.student_inputs)
    for label, name, kwargs in entries:
        run = variant(recipe, name, kwargs, seed, root / label / f"seed{seed}", caches=root / "cache")
        plan = plan_from_recipe(run, data=data)
        try:
            outcome = execute(plan, resume=resume, log=_tagged(log, label, seed))
        except DistillError as e:
            rows.setdefault(label, Row(label)).status = f"failed: {first_line(e)}"
            log(f"warning: {label} failed (seed {seed}): {e}")
            continue
        for role, t in outcome.trained.items():
            if role.startswith("teacher") and getattr(STRATEGIES.get(name), "same_task", True):
                continue  # shared teachers have their rows; a teacher adapted per run (cross_task) has one per entry
            key = label if role == "student" else f"{label}:{role}"
            evaluated = Trained(t.frozen, t.history) if t.frozen is not None else t  # with its preprocessing
            _record(rows.setdefault(key, Row(key)), seed, evaluated, data, t.inputs)

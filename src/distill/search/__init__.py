"""``distill auto`` / ``distill.auto(...)``: search a recipe's method, temperature, weights, learning rate and
student size under an accuracy / latency budget with Optuna, then run the chosen recipe with the usual report.

Outputs under the recipe's ``output_dir``: ``study.db`` (the Optuna study: a killed search resumes from it),
``trials/NNN/`` (each trial's run), ``auto.md`` / ``auto.json`` (every trial), ``pareto.png``, ``chosen.yaml``
and ``final-trialNNN/seedS/`` (the chosen recipe's runs, each with its ``report.md``).
"""

from __future__ import annotations

import copy
import importlib.util
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from distill.errors import DistillError, error_boundary
from distill.search.space import SearchSpec, default_space, parse, temperatures, trial_recipe

__all__ = ["AutoResult", "SearchSpec", "auto"]


@dataclass
class AutoResult:
    """A finished search: the chosen trial's row, the chosen recipe file, the final runs' reports and the
    search's own outputs (``study``, ``table`` (auto.md), ``pareto`` (PNG))."""

    chosen: dict[str, Any]
    recipe: Path
    reports: list[Path]
    study: Path
    table: Path
    pareto: Path
    trials: list[dict[str, Any]]


@error_boundary
def auto(recipe: str | Path, *, overrides: list[str] | None = None, trials: int | None = None,
         budget: str | None = None, objective: str = "accuracy", seeds: int = 1, log: Any = print) -> AutoResult:
    """Search ``recipe``'s space (its ``search`` section, or the default of ``distill.search.space``) for
    ``trials`` trials (default ``search.trials``), keeping students within ``budget`` (``"latency_ms_b1<=X"``,
    ``"params<=N"``, or ``<=recipe``: no more than the recipe's own student); ``objective``: ``accuracy`` (best
    validation top-1, weak trials pruned early) or ``pareto`` (accuracy and cost both, no pruning). Then runs the
    chosen recipe for ``seeds`` seeds with its report."""
    from distill.search.report import choose, rows, write_outputs
    from distill.search.study import Budget, Search, finished, open_study, resolve_budget
    from distill.search.study import objective as run_trial

    if importlib.util.find_spec("optuna") is None:
        raise DistillError("distill auto needs Optuna: pip install 'distill[auto]'")
    if objective not in ("accuracy", "pareto"):
        raise DistillError(f"--objective {objective!r}: choose accuracy or pareto")
    if seeds < 1 or (trials is not None and trials < 1):
        raise DistillError("--trials and --seeds must be at least 1")
    raw, base = _base(recipe, overrides or [])
    spec = base.search or SearchSpec()
    space = parse(spec.space) if spec.space is not None else default_space(raw)
    limit = Budget.parse(budget) if budget else None
    from distill.build import load_data

    data = load_data(base)
    raw = _teacher_once(raw, base, data, log)
    search = Search(raw=raw, space=space, data=data, out=base.out, budget=limit, pareto=objective == "pareto",
                    epochs=spec.epochs, cache_path=_shared_cache(raw, base, data, space, log), log=log)
    study = open_study(search, base.seed)
    resolve_budget(search, study, base)
    limit = search.budget
    started, before = time.perf_counter(), float(study.user_attrs.get("seconds", 0.0))
    todo = (trials or spec.trials) - finished(study)
    log(f"auto: {todo} trial(s) to run in {base.out} (budget {limit or 'none'}, objective {objective})")
    if todo > 0:
        study.optimize(partial(run_trial, search), n_trials=todo)
    seconds = before + time.perf_counter() - started
    study.set_user_attr("seconds", seconds)
    table = rows(study, limit)
    extra = {"recipe": str(recipe), "objective": objective, "seconds": seconds,
             "budget_metric": limit.metric if limit else None, "budget_limit": limit.limit if limit else None}
    chosen = None
    try:
        chosen = choose(table, limit)
    finally:  # the table is written even when no trial fits the budget
        paths = write_outputs(base.out, table, chosen, limit, extra)
    log(f"auto: {len(table)} trials in {seconds:.0f}s; chosen trial {chosen['trial']}: val top-1 "
        f"{chosen['val_top1']:.2%}; table {paths['md']}")
    chosen_file, reports = _final(raw, chosen, base, search, seeds, log)
    return AutoResult(chosen, chosen_file, reports, base.out / "study.db", paths["md"], paths["png"], table)


def _base(recipe: str | Path, overrides: list[str]) -> tuple[dict[str, Any], Any]:
    """The recipe file with its overrides as a raw dict, and validated (every problem found before a trial)."""
    from distill.recipe import read_recipe_dict, recipe_from_dict

    path = Path(recipe)
    raw = read_recipe_dict(path, overrides)
    return raw, recipe_from_dict(copy.deepcopy(raw), source=str(path))


def _teacher_once(raw: dict[str, Any], base: Any, data: Any, log: Any) -> dict[str, Any]:
    """A teacher without weights is trained once, into ``<output_dir>/teacher/``, and every trial loads it."""
    from distill.plan import plan_from_recipe
    from distill.pruned import teacher_only
    from distill.run import obtain_teacher

    plan = plan_from_recipe(teacher_only(base), data=data)  # a student pruned from it needs it trained first
    if plan.teacher is None or plan.teacher.train is None:
        return raw
    weights = obtain_teacher(plan, resume=True, log=log).weights
    return {**raw, "teacher": {**raw["teacher"], "weights": str(weights)}}


def _shared_cache(raw: dict[str, Any], base: Any, data: Any, space: dict[str, Any], log: Any) -> Path | None:
    """Build the teacher cache every logit-method trial reads, once, with every temperature the space can pick;
    None (each trial decides alone) without a teacher, with the cache off, or when T is a continuous range."""
    from distill.build import build_methods
    from distill.cache.plan import obtain_cache
    from distill.methods import MethodSet
    from distill.methods.kd import KD
    from distill.plan import plan_from_recipe
    from distill.recipe import recipe_from_dict

    temps = temperatures(space)
    if base.teacher is None or base.cache.mode == "off" or data.tokens:
        return None
    if temps is None:
        log("auto: T is searched over a continuous range: each trial builds its own teacher cache (give T as a "
            "list of choices to share one)")
        return None
    path = Path(base.cache.path) if base.cache.path else base.out / "cache"
    shared = trial_recipe({**raw, "cache": {**_cache_dict(raw), "path": str(path)}}, {})
    plan = plan_from_recipe(recipe_from_dict(shared, source="search"), data=data)
    # the space's temperatures and those of the recipe's own methods (kept by trials that do not vary them)
    every_t = MethodSet([KD(T=t) for t in sorted({*temps, *build_methods(base).cache_temperatures()})])
    obtain_cache(replace(plan, methods=every_t), plan.teacher.frozen(data), log=log)
    return path


def _cache_dict(raw: dict[str, Any]) -> dict[str, Any]:
    cache = raw.get("cache")
    return {"mode": cache} if isinstance(cache, str) else dict(cache or {})


def _final(raw: dict[str, Any], chosen: dict[str, Any], base: Any, search: Any, seeds: int,
           log: Any) -> tuple[Path, list[Path]]:
    """Write the chosen recipe (``chosen.yaml``: the recipe's own epochs, scratch baseline and latency) and run it
    for ``seeds`` seeds (resumable: a finished seed is not run again)."""
    from distill.io import write_text
    from distill.recipe import recipe_from_dict
    from distill.run import run

    final = trial_recipe(raw, chosen["values"])
    if search.cache_path is not None and _cache_dict(final).get("mode", "auto") == "auto":
        final["cache"] = {**_cache_dict(final), "path": str(search.cache_path)}
    folder = base.out / f"final-trial{chosen['trial']:03d}"
    final["output_dir"] = str(folder / f"seed{base.seed}")
    path = base.out / "chosen.yaml"
    write_text(path, f"# distill auto: trial {chosen['trial']} of {base.out / 'auto.md'}\n"
               + yaml.safe_dump(final, sort_keys=False))
    reports = []
    for seed in range(base.seed, base.seed + seeds):
        runnable = {**final, "seed": seed, "output_dir": str(folder / f"seed{seed}")}
        reports.append(run(recipe_from_dict(runnable, source=str(path)), resume=True, log=log))
    return path, reports

"""One ``distill auto`` search: an Optuna study in SQLite whose trials are runs of the recipe with sampled values.

Each trial is built, measured against the budget (a trial over it never trains: it is recorded with its
constraint violation, which the constrained TPE sampler learns from), then trained with the engine; its
student's validation top-1 after each epoch goes to the Median pruner, which stops weak trials early. Every trial
of a logit method reads one teacher cache, built once before the first trial. A killed search resumes from the
SQLite file: finished trials stay, the trial that was running is run again.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from distill.data import DataSplits, head
from distill.errors import DistillError
from distill.evaluate import count_params, latency_ms
from distill.search.space import recipe_params, sample, trial_recipe

Log = Callable[[str], None]
STUDY = "distill-auto"
METRICS = {"latency_ms_b1": "latency at batch 1 (ms)", "params": "parameters"}


@dataclass(frozen=True)
class Budget:
    """``latency_ms_b1<=X`` or ``params<=Y``: what a chosen student may cost; ``<=recipe``: no more than the
    recipe's own student, measured by this search (``limit`` is set once it is)."""

    metric: str
    limit: float
    of_recipe: bool = False

    @classmethod
    def parse(cls, text: str) -> Budget:
        """Read ``--budget``; a malformed one is a DistillError naming the accepted forms."""
        m = re.fullmatch(r"\s*(latency_ms_b1|params)\s*<=\s*([0-9.eE+-]+|recipe)\s*", text)
        if m is not None and m.group(2) == "recipe":
            return cls(m.group(1), float("nan"), of_recipe=True)
        try:
            limit = float(m.group(2)) if m else -1.0
        except ValueError:
            limit = -1.0
        if m is None or not limit > 0:
            raise DistillError(f"--budget {text!r}: give latency_ms_b1<=X (ms, batch 1) or params<=N, "
                               "with a positive number, or <=recipe (no more than the recipe's own student)")
        return cls(m.group(1), limit)

    def __str__(self) -> str:
        return f"{self.metric}<={self.limit:.4g}" + (" (the recipe's student)" if self.of_recipe else "")


def measure(model: Any, data: DataSplits, rounds: int = 10, pause_s: float = 0.15) -> dict[str, float]:
    """The student's size and batch-1 latency: the lowest of ``rounds`` medians of up to 100 timed forwards,
    spread over ~``rounds * pause_s`` seconds. A small model's batch-1 forward takes tens of microseconds, and
    this machine has slow spells lasting up to a second during which a median doubles: a single median, or
    several taken back to back, decided whether two identical students fit a budget. The lowest spread-out
    median is what the model costs when the machine lets it, the same for every trial."""
    sample, best = head(data.test, 1), float("inf")
    for i in range(rounds):
        if i:
            time.sleep(pause_s)
        best = min(best, latency_ms(model, sample, 1, repeats=100, warmup=10, budget_s=0.5))
    return {"params": float(count_params(model)), "latency_ms_b1": best}


@dataclass
class Search:
    """What every trial shares: the base recipe (raw, overrides applied), its space, data and settings."""

    raw: dict[str, Any]
    space: dict[str, Any]
    data: DataSplits
    out: Path
    budget: Budget | None
    pareto: bool
    epochs: int | None
    cache_path: Path | None
    log: Log

    costs: dict[str, dict[str, float]] = field(default_factory=dict)  # by student_key: measured once

    def cost(self, student: Any) -> dict[str, float]:
        """A student's params and batch-1 latency, measured once per architecture (identical students always
        get the same numbers). Over a latency budget, measured twice more before it counts: noise only adds."""
        key = student_key(student)
        if key not in self.costs:
            cost = measure(student, self.data)
            b = self.budget
            if b is not None and b.metric == "latency_ms_b1" and cost["latency_ms_b1"] > b.limit:
                again = (measure(student, self.data)["latency_ms_b1"] for _ in range(2))
                cost["latency_ms_b1"] = min(cost["latency_ms_b1"], *again)
            self.costs[key] = cost
        return dict(self.costs[key])

    @property
    def trial_epochs(self) -> int:
        """Epochs each trial trains: ``search.epochs``, else the recipe's."""
        return self.epochs or int((self.raw.get("train") or {}).get("epochs", 10))


def open_study(search: Search, seed: int) -> Any:
    """The study in ``<out>/study.db`` (created or reopened); trials a kill interrupted are re-queued."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    search.out.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{(search.out / 'study.db').resolve()}")
    # a trial's budget violation (Trial.set_constraint) steers the TPE sampler towards students that fit
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    # a trial is compared with the others from its middle epoch on, and only once 3 trials have reached that
    # epoch: trials over the budget never report, and a slow start (a low lr) is not a weak trial
    pruner = optuna.pruners.MedianPruner(n_startup_trials=0, n_warmup_steps=max(0, search.trial_epochs // 2 - 1),
                                         n_min_trials=3)
    study = optuna.create_study(storage=storage, study_name=STUDY, load_if_exists=True, sampler=sampler,
                                pruner=pruner, directions=["maximize", "minimize"] if search.pareto else
                                ["maximize"])
    if len(study.directions) != (2 if search.pareto else 1):
        raise DistillError(f"{search.out / 'study.db'} holds a search with another --objective; give the same "
                           "objective or another output_dir")
    if not study.trials:  # a new study starts from the recipe as written
        study.enqueue_trial(recipe_params(search.raw, search.space), skip_if_exists=True)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        study.enqueue_trial(t.params)
        search.log(f"auto: trial {t.number} was interrupted; its values are queued again")
    return study


def student_key(model: Any) -> str:
    """What a student's cost depends on: its architecture (module types, parameter and buffer shapes), however
    its spec was written."""
    layout = [type(model).__name__, *(f"{type(m).__name__}:{n}" for n, m in model.named_modules()),
              *(f"{n}{tuple(t.shape)}" for n, t in [*model.named_parameters(), *model.named_buffers()])]
    return hashlib.sha256(json.dumps(layout).encode()).hexdigest()[:16]


def resolve_budget(search: Search, study: Any, base: Any) -> None:
    """Known costs from the study's trials (a resumed search measures nothing twice), and a ``<=recipe`` budget
    set from the recipe's own student: measured once and kept in the study."""
    from distill.plan import plan_from_recipe

    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        if "student" in a and "latency_ms_b1" in a:
            search.costs[a["student"]] = {"params": a["params"], "latency_ms_b1": a["latency_ms_b1"]}
    if search.budget is None or not search.budget.of_recipe:
        return
    student = plan_from_recipe(base, data=search.data).student
    key = student_key(student)
    if "reference" in study.user_attrs:
        search.costs[key] = dict(study.user_attrs["reference"])
    else:
        search.costs[key] = measure(student, search.data)
        study.set_user_attr("reference", search.costs[key])
    search.budget = replace(search.budget, limit=search.costs[key][search.budget.metric])
    search.log(f"auto: budget {search.budget}")


def finished(study: Any) -> int:
    """Trials that ended (completed, pruned or over the budget): a resumed search does not repeat them."""
    import optuna

    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    return len(study.get_trials(deepcopy=False, states=done))


def objective(search: Search, trial: Any) -> float | tuple[float, float]:
    """Build, measure and (within the budget) train one trial; its value is the last epoch's validation top-1."""
    import optuna

    from distill.plan import plan_from_recipe
    from distill.recipe import recipe_from_dict
    from distill.run import execute

    values = sample(trial, search.space)
    folder = search.out / "trials" / f"{trial.number:03d}"
    recipe = recipe_from_dict(_trial_raw(search, values, folder), source=f"search trial {trial.number}")
    plan = plan_from_recipe(recipe, data=search.data)
    cost = search.cost(plan.student)
    trial.set_user_attr("student", student_key(plan.student))
    trial.set_user_attr("values", values)
    trial.set_user_attr("folder", str(folder))
    for k, v in cost.items():
        trial.set_user_attr(k, v)
    key = search.budget.metric if search.budget else "latency_ms_b1"
    over = cost[key] - search.budget.limit if search.budget else -1.0
    trial.set_constraint("budget", over)  # <= 0: within it (Optuna's convention)
    trial.set_user_attr("over_budget", over > 0)
    if over > 0:  # never trained: the sampler learns the budget from the violation
        search.log(f"auto: trial {trial.number}: {describe(values)}: over the budget ({key} {cost[key]:.4g} > "
                   f"{search.budget.limit:g}), not trained")
        return (0.0, cost[key]) if search.pareto else 0.0
    started = time.perf_counter()
    if not search.pareto:  # Optuna's pruners take one objective
        plan.epoch_hook = _pruning_hook(trial, search.log)
    try:
        outcome = execute(plan, log=_file_log(folder / "log.txt"))
    except optuna.TrialPruned:
        trial.set_user_attr("seconds", time.perf_counter() - started)
        raise
    trial.set_user_attr("seconds", time.perf_counter() - started)
    val = float(outcome.trained["student"].history[-1]["val_top1"])
    search.log(f"auto: trial {trial.number}: {describe(values)}: val top-1 {val:.2%} ({key} {cost[key]:.4g}, "
               f"{time.perf_counter() - started:.0f}s)")
    return (val, cost[key]) if search.pareto else val


def _trial_raw(search: Search, values: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The trial's recipe: the sampled values, its own folder, no scratch baseline and no latency timing (the
    final run has both), the shared cache, and the search's epochs."""
    raw = trial_recipe(search.raw, values)
    raw["output_dir"] = str(folder)
    raw["compare"] = False
    raw["eval"] = {**(raw.get("eval") or {}), "latency": False}
    if search.epochs is not None:
        raw["train"] = {**(raw.get("train") or {}), "epochs": search.epochs}
    if search.cache_path is not None:
        cache = raw.get("cache")
        cache = {"mode": cache} if isinstance(cache, str) else dict(cache or {})
        if cache.get("mode", "auto") == "auto" and "path" not in cache:
            raw["cache"] = {**cache, "path": str(search.cache_path)}
    return raw


def _pruning_hook(trial: Any, log: Log) -> Callable[[str, int, dict[str, float]], None]:
    import optuna

    def hook(role: str, epoch: int, metrics: dict[str, float]) -> None:
        if role != "student" or "val_top1" not in metrics:
            return
        trial.report(float(metrics["val_top1"]), epoch)
        if trial.should_prune():
            trial.set_user_attr("pruned_at_epoch", epoch + 1)
            log(f"auto: trial {trial.number}: pruned after epoch {epoch + 1} (val top-1 "
                f"{metrics['val_top1']:.2%}, below the median of earlier trials)")
            raise optuna.TrialPruned()
    return hook


def _file_log(path: Path) -> Log:
    """A trial's own log lines go to its folder, not to the search's output."""
    def log(line: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(line + "\n")
    return log


def describe(values: dict[str, Any]) -> str:
    """A trial's values in one short phrase: ``kd T=4 alpha=0.3 lr=0.02 width=0.8``."""
    parts = [str(values["method"])] if "method" in values else []
    for k, v in values.items():
        if k == "method":
            continue
        name = k.rsplit(".", 1)[-1]
        parts.append(f"{name}={v:.3g}" if isinstance(v, float) else f"{name}={v}")
    return " ".join(parts)

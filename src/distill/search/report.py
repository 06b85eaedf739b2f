"""What a finished ``distill auto`` search writes: the trials table (``auto.md``, ``auto.json``), the Pareto front
of validation accuracy against the budget's cost (``pareto.png``) and the chosen recipe (``chosen.yaml``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.errors import DistillError
from distill.io import write_json, write_text
from distill.search.study import METRICS, Budget, describe


def rows(study: Any, budget: Budget | None) -> list[dict[str, Any]]:
    """Every ended trial as a plain row: values, state, validation top-1, cost, whether it fits the budget."""
    import optuna

    out = []
    for t in study.get_trials(deepcopy=False):
        if t.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING):
            continue
        a = t.user_attrs
        over = bool(a.get("over_budget"))
        state = "over budget" if over else {"COMPLETE": "complete", "PRUNED": "pruned"}.get(t.state.name, "failed")
        val = t.values[0] if t.values and state == "complete" else _last(t)
        out.append({"trial": t.number, "state": state, "values": a.get("values", {}), "val_top1": val,
                    "latency_ms_b1": a.get("latency_ms_b1"), "params": a.get("params"),
                    "pruned_at_epoch": a.get("pruned_at_epoch"), "seconds": a.get("seconds"),
                    "folder": a.get("folder")})
    return out


def _last(trial: Any) -> float | None:
    steps = trial.intermediate_values
    return float(steps[max(steps)]) if steps else None


def pareto_front(candidates: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """The completed rows no other row beats on both validation top-1 (higher) and ``metric`` (lower)."""
    def beaten(r: dict[str, Any]) -> bool:
        return any(o["val_top1"] >= r["val_top1"] and o[metric] <= r[metric]
                   and (o["val_top1"] > r["val_top1"] or o[metric] < r[metric]) for o in candidates)
    return sorted((r for r in candidates if not beaten(r)), key=lambda r: r[metric])


def choose(table: list[dict[str, Any]], budget: Budget | None) -> dict[str, Any]:
    """The completed trial within the budget with the best validation top-1 (the cheaper one on a tie); no such
    trial is a DistillError naming the closest one."""
    metric = budget.metric if budget else "latency_ms_b1"
    done = [r for r in table if r["state"] == "complete"]
    if not done:
        over = [r for r in table if r["state"] == "over budget"]
        if over and budget is not None:
            near = min(over, key=lambda r: r[metric])
            raise DistillError(f"no trial fits the budget {budget}: the closest was trial {near['trial']} "
                               f"({describe(near['values'])}) at {metric} {near[metric]:.4g}; raise the budget or "
                               "search smaller students")
        raise DistillError("no trial completed (every one was pruned or failed); see the trials' log.txt under "
                           f"{Path(table[0]['folder']).parent if table else 'trials/'}")
    return max(done, key=lambda r: (r["val_top1"], -r[metric]))


def write_outputs(out: Path, table: list[dict[str, Any]], chosen: dict[str, Any] | None, budget: Budget | None,
                  extra: dict[str, Any]) -> dict[str, Path]:
    """auto.json, auto.md and pareto.png under ``out`` (atomic writes); returns their paths."""
    metric = budget.metric if budget else "latency_ms_b1"
    front = pareto_front([r for r in table if r["state"] == "complete"], metric)
    marks = {r["trial"] for r in front}
    paths = {"json": out / "auto.json", "md": out / "auto.md", "png": out / "pareto.png"}
    write_json(paths["json"], {**extra, "budget": str(budget) if budget else None, "trials": table,
                               "pareto_front": sorted(marks), "chosen": chosen and chosen["trial"]})
    write_text(paths["md"], _markdown(table, marks, chosen, budget, extra))
    _plot(paths["png"], table, front, chosen, budget)
    return paths


def _markdown(table: list[dict[str, Any]], front: set[int], chosen: dict[str, Any] | None,
              budget: Budget | None, extra: dict[str, Any]) -> str:
    counts = {s: sum(r["state"] == s for r in table) for s in ("complete", "pruned", "over budget", "failed")}
    lines = [f"# distill auto: {extra.get('recipe', '')}", "",
             f"{len(table)} trials in {extra.get('seconds', 0):.0f} s: {counts['complete']} complete, "
             f"{counts['pruned']} pruned early, {counts['over budget']} over the budget "
             f"({budget or 'none'}, not trained), {counts['failed']} failed. "
             f"Objective: {extra.get('objective')}. Chosen: trial {chosen['trial'] if chosen else '-'}.", "",
             "| trial | values | state | val top-1 | latency b1 (ms) | params | Pareto |",
             "|---:|---|---|---:|---:|---:|:---:|"]
    for r in table:
        val = f"{r['val_top1']:.2%}" if r["val_top1"] is not None else "-"
        state = r["state"] + (f" (epoch {r['pruned_at_epoch']})" if r.get("pruned_at_epoch") else "")
        star = " **chosen**" if chosen and r["trial"] == chosen["trial"] else ""
        lines.append(f"| {r['trial']}{star} | {describe(r['values'])} | {state} | {val} | "
                     f"{r['latency_ms_b1']:.4f} | {int(r['params']):,} | {'x' if r['trial'] in front else ''} |")
    return "\n".join(lines) + "\n\n![Pareto front](pareto.png)\n"


def _plot(path: Path, table: list[dict[str, Any]], front: list[dict[str, Any]], chosen: dict[str, Any] | None,
          budget: Budget | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from distill.report import save_figure

    metric = budget.metric if budget else "latency_ms_b1"
    fig, ax = plt.subplots(figsize=(6, 4))
    for state, style in (("complete", "o"), ("pruned", "x")):
        pts = [r for r in table if r["state"] == state and r["val_top1"] is not None]
        ax.scatter([r[metric] for r in pts], [100 * r["val_top1"] for r in pts], marker=style,
                   label=state if state == "complete" else "pruned (last epoch reached)", alpha=0.7)
    if front:
        ax.plot([r[metric] for r in front], [100 * r["val_top1"] for r in front], "-", color="C3",
                label="Pareto front")
    if chosen:
        ax.scatter([chosen[metric]], [100 * chosen["val_top1"]], marker="*", s=200, color="C3", label="chosen")
    if budget:
        ax.axvline(budget.limit, linestyle="--", color="grey", label=f"budget {budget}")
    ax.set_xlabel(METRICS[metric])
    ax.set_ylabel("validation top-1 (%)")
    ax.legend(fontsize=8)
    save_figure(fig, path)

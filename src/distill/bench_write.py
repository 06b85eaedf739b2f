"""The bench table: one Row per role or method over seeds, written as bench.md / .csv / .json / .png."""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from distill.io import atomic_path, write_json, write_text
from distill.recipe import Recipe
from distill.report import DASH, collect_versions, git_sha


@dataclass
class Row:
    """One line of the table: a role or method, its per-seed results and its status."""

    method: str
    status: str = "ok"  # "ok", "skipped: <reason>" or "failed: <reason>"
    last: dict[int, float] = field(default_factory=dict)  # seed -> test top-1 after the last epoch
    best: dict[int, float] = field(default_factory=dict)  # seed -> test top-1 at the best-validation epoch
    seconds: dict[int, float] = field(default_factory=dict)  # seed -> mean seconds per epoch

    def stat(self, key: str) -> tuple[float | None, float | None]:
        """(mean, std) over seeds of 'last', 'best' or 'seconds' (std with ddof=1; 0 for one value)."""
        return mean_std(list(getattr(self, key).values()))


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (ddof=1); std is 0 for a single value, both None for none."""
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def ordered(rows: list[Row]) -> list[Row]:
    """Teacher, scratch, then methods by mean top-1 (last) descending; skipped/failed methods last."""
    head = [r for name in ("teacher", "scratch") for r in rows if r.method == name]
    rest = [r for r in rows if r.method not in ("teacher", "scratch")]
    done = sorted((r for r in rest if r.status == "ok"), key=lambda r: -(r.stat("last")[0] or 0.0))
    return head + done + [r for r in rest if r.status != "ok"]


def write_bench(root: Path, rows: list[Row], *, command: str, recipe: Recipe, seeds: list[int],
                plans: dict[str, list[dict[str, Any]]], footer: str | None = None) -> Path:
    """Write bench.json, bench.csv, bench.png and (last) bench.md atomically; returns bench.md's path."""
    rows = ordered(rows)
    scratch = next((r.stat("last")[0] for r in rows if r.method == "scratch"), None)
    summary = [_summary(r, scratch) for r in rows]
    write_json(root / "bench.json", {
        "command": command, "seeds": seeds, "rows": summary,
        "methods": plans,
        "recipe": recipe.model_dump(mode="json"), "versions": collect_versions(), "git_sha": git_sha(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    write_text(root / "bench.csv", _csv(summary, seeds))
    _plot(root / "bench.png", [r for r in rows if r.last and r.status == "ok"], recipe.name)
    md = root / "bench.md"
    write_text(md, _markdown(summary, command, recipe, seeds, plans, footer))
    return md


def _summary(row: Row, scratch_last: float | None) -> dict[str, Any]:
    (last, last_sd), (best, best_sd), (secs, _) = row.stat("last"), row.stat("best"), row.stat("seconds")
    delta = last - scratch_last if last is not None and scratch_last is not None else None
    return {"method": row.method, "status": row.status, "runs": len(row.last), "top1_last_mean": last,
            "top1_last_std": last_sd, "top1_best_mean": best, "top1_best_std": best_sd,
            "delta_vs_scratch_last": None if row.method == "scratch" else delta, "seconds_per_epoch": secs,
            "top1_last": dict(row.last), "top1_best": dict(row.best)}


def _csv(summary: list[dict[str, Any]], seeds: list[int]) -> str:
    keys = ["method", "status", "runs", "top1_last_mean", "top1_last_std", "top1_best_mean", "top1_best_std",
            "delta_vs_scratch_last", "seconds_per_epoch"]
    per_seed = [f"{k}_seed{s}" for k in ("top1_last", "top1_best") for s in seeds]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(keys + per_seed)
    for s in summary:
        values = [s[k] for k in keys] + [s[k].get(seed) for k in ("top1_last", "top1_best") for seed in seeds]
        writer.writerow(["" if v is None else v for v in values])
    return buf.getvalue()


def _pm(mean: float | None, std: float | None) -> str:
    return DASH if mean is None else f"{100 * mean:.2f} ± {100 * (std or 0.0):.2f}"


def _md_row(r: dict[str, Any]) -> str:
    cells = [r["method"], str(r["runs"])]
    if r["status"] != "ok":
        cells += [r["status"], DASH, DASH, DASH]
    else:
        delta, secs = r["delta_vs_scratch_last"], r["seconds_per_epoch"]
        cells += [_pm(r["top1_last_mean"], r["top1_last_std"]), _pm(r["top1_best_mean"], r["top1_best_std"]),
                  DASH if delta is None else f"{100 * delta:+.2f}", DASH if secs is None else f"{secs:.2f}"]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def _markdown(summary: list[dict[str, Any]], command: str, recipe: Recipe, seeds: list[int],
              plans: dict[str, list[dict[str, Any]]], footer: str | None = None) -> str:
    from distill.pruned import describe

    t, s = recipe.teacher, recipe.student
    teacher = t.name if t else ", ".join(recipe.teachers or {}) or DASH
    lines = [f"# bench: {recipe.name}", "", "```bash", command, "```", "",
             f"Teacher `{teacher}` -> student `{describe(s)}` on `{recipe.data.name}`, seeds "
             f"{', '.join(map(str, seeds))}. Test top-1 in %, mean ± std over seeds (sample std); best = test "
             "top-1 at the best-validation epoch; delta = mean top-1 (last) minus scratch's, in points.", "",
             "| method | runs | top-1 last (%) | top-1 best (%) | delta vs scratch (last) | s/epoch |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [_md_row(r) for r in summary]
    if footer is not None:
        return "\n".join([*lines, "", footer, ""])
    alone = [n for n, specs in plans.items() if len(specs) == 1]
    combined = [n for n, specs in plans.items() if len(specs) > 1]
    lines += ["", f"Used alone (they include their own cross-entropy): {', '.join(alone) or DASH}. "
              f"Combined as ce + method: {', '.join(combined) or DASH}. The teacher is trained once (seed "
              f"{recipe.seed}); runs are in `<method>/seed<k>/`.", ""]
    return "\n".join(lines)


def _plot(path: Path, rows: list[Row], title: str) -> None:
    """Horizontal bars of mean top-1 (last) with std error bars, teacher at the top."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    fig = Figure(figsize=(7, 1.2 + 0.4 * max(len(rows), 1)), layout="constrained")
    ax = fig.subplots()
    stats = [r.stat("last") for r in rows]
    means = [100 * (m or 0.0) for m, _ in stats]
    colors = ["C7" if r.method in ("teacher", "scratch") else "C0" for r in rows]
    ax.barh(range(len(rows)), means, xerr=[100 * (sd or 0.0) for _, sd in stats], color=colors, capsize=3)
    ax.set_yticks(range(len(rows)), [r.method for r in rows])
    ax.invert_yaxis()
    if means:
        ax.set_xlim(max(0.0, min(means) - 10), min(100.0, max(means) + 5))
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="test top-1, last epoch (%), mean ± std over seeds", title=f"bench: {title}")
    ax.grid(alpha=0.3, axis="x")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)

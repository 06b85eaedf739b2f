"""``distill bench``: many methods on one teacher/student pair over several seeds, in one table.

The teacher is trained (or loaded) once. For every seed the scratch student and one distilled student per
method are trained exactly as ``distill run`` would with that seed (same label subset, same steps, same initial
weights), each into ``<output_dir>/bench/<method>/seed<k>/``. Logit methods that carry their own
cross-entropy (kd, dkd, dist) are used alone; every other method is combined with ``ce`` (RepDistiller style).
"""

from __future__ import annotations

import csv
import io
import shlex
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from distill.build import build_methods, check_classes, load_data
from distill.data import DataSplits, head
from distill.engine import setup_methods
from distill.errors import DistillError
from distill.evaluate import model_metrics
from distill.io import atomic_path, write_json, write_text
from distill.methods import METHODS
from distill.models import Keys
from distill.plan import TeacherPart, plan_from_recipe
from distill.recipe import Recipe, parse_value, recipe_from_dict
from distill.report import DASH, collect_versions, git_sha
from distill.run import Trained, obtain_teacher, train_scratch, train_student
from distill.spec_check import check_kwargs

Log = Callable[[str], None]


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


def select_methods(text: str) -> list[str]:
    """``all`` (every registered method except ce) or a comma-separated list; ``kd+irg`` is one entry that
    combines methods (their terms summed). Unknown names raise."""
    if text.strip() == "all":
        return [n for n in METHODS.names() if n != "ce"]
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise DistillError("--methods: give 'all' or a comma-separated list of methods, e.g. kd,dkd,rkd,kd+irg")
    for name in names:
        for part in name.split("+"):
            METHODS.get(part.strip())  # unknown name: DistillError with suggestions
        if name == "ce":
            raise DistillError("--methods: 'ce' is the scratch baseline, which every bench includes")
    return names


def load_method_args(path: str | None) -> dict[str, dict[str, Any]]:
    """Read ``--method-args``: a YAML mapping of method name -> keyword arguments (``weight`` allowed); keys
    starting with ``_`` are skipped, so they can hold YAML anchors (``_maps: &maps {...}``) reused below."""
    if path is None:
        return {}
    file = Path(path)
    if not file.is_file():
        raise DistillError(f"--method-args: file not found: {file}")
    raw = parse_value(file.read_text()) or {}
    if not isinstance(raw, dict) or not all(isinstance(v, dict) or v is None for v in raw.values()):
        raise DistillError(f"--method-args {file}: expected a YAML mapping of method name -> arguments")
    # keys starting with "_" only hold YAML anchors shared by several methods
    args = {str(k): dict(v or {}) for k, v in raw.items() if not str(k).startswith("_")}
    for name, kwargs in args.items():
        cls = METHODS.get(name)
        weight = kwargs.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise DistillError(f"{file}: {name}.weight: expected a number (got {weight!r})")
        check_kwargs(cls, {k: v for k, v in kwargs.items() if k != "weight"}, f"{file}: {name}",
                     f"method '{name}'")
    return args


def method_specs(recipe: Recipe, name: str, method_args: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``methods`` list of one bench run: the method alone when it is a logit method with its own CE,
    else ``[ce, method]``; for a combination ``a+b``, the methods themselves. Arguments: the recipe's own entry
    for each method, updated by ``method_args``."""
    specs = []
    for part in (p.strip() for p in name.split("+")):
        own = next((m for m in recipe.methods if m.name == part), None)
        spec = {"name": part, **(own.model_dump(mode="json", exclude_none=True) if own else {}),
                **method_args.get(part, {})}
        kwargs = {k: v for k, v in spec.items() if k not in ("name", "weight", "teacher")}
        method = METHODS.get(part)(**kwargs)  # may raise DistillError: the caller records the method as skipped
        specs.append(spec)
    if len(specs) > 1:
        return specs
    return specs if not method.needs.student_taps else [{"name": "ce"}, specs[0]]


def run_recipe(recipe: Recipe, seed: int, out: Path, methods: list[dict[str, Any]]) -> Recipe:
    """The recipe of one bench run: its seed, its output folder and its methods."""
    raw = recipe.model_dump(mode="json")
    raw.update(seed=seed, output_dir=str(out), methods=methods, compare=True)
    return recipe_from_dict(raw, source="bench")


def bench(recipe: Recipe, *, methods: str = "all", seeds: int = 1, method_args: str | None = None,
          resume: bool = False, command: str | None = None, log: Log = print) -> Path:
    """Run the benchmark and write bench.md / .csv / .png / .json; returns the path of bench.md."""
    if seeds < 1:
        raise DistillError(f"--seeds must be at least 1 (got {seeds})")
    if recipe.teacher is None:
        raise DistillError("bench needs a recipe with a 'teacher' section")
    names, args = select_methods(methods), load_method_args(method_args)
    root = recipe.out / "bench"
    seed_list = list(range(recipe.seed, recipe.seed + seeds))
    data = load_data(recipe)
    plans, rows = _plan(recipe, data, names, args, root, log)
    base = plan_from_recipe(recipe.model_copy(update={"output_dir": str(root)}), data=data)
    teacher = obtain_teacher(base, resume=resume, log=lambda m: log(f"[teacher] {m}"))
    assert base.teacher is not None
    rows["teacher"] = Row("teacher")
    _record(rows["teacher"], recipe.seed, Trained(base.teacher.frozen(data), teacher.history), data, None)
    for seed in seed_list:
        _bench_seed(recipe, seed, plans, rows, base.teacher, root, resume, log)
    return write_bench(root, list(rows.values()), command=command or f"distill bench (seeds {seed_list})",
                       recipe=recipe, seeds=seed_list, plans=plans)


def _plan(recipe: Recipe, data: DataSplits, names: list[str], args: dict[str, dict[str, Any]], root: Path,
          log: Log) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Row]]:
    """Method lists per method name, checked by a dry run on the pair; failures become 'skipped' rows."""
    pair = plan_from_recipe(recipe, data=data)
    assert pair.teacher is not None
    teacher = pair.teacher.frozen(data)
    check_classes(data, {"student": pair.student_inputs}, teacher=teacher, student=pair.student)
    plans: dict[str, list[dict[str, Any]]] = {}
    rows = {"scratch": Row("scratch")}
    for name in names:
        rows[name] = Row(name)
        try:
            specs = method_specs(recipe, name, args)
            built = build_methods(run_recipe(recipe, recipe.seed, root, specs))
            setup_methods(built, pair.student, teacher, head(data.train, 2), num_samples=len(data.train),
                          num_classes=data.num_classes, inputs=pair.student_inputs)
        except DistillError as e:
            rows[name].status = f"skipped: {_line(e)}"
            log(f"warning: {name} skipped: {_line(e)}")
            continue
        plans[name] = specs
    return plans, rows


def _bench_seed(recipe: Recipe, seed: int, plans: dict[str, list[dict[str, Any]]], rows: dict[str, Row],
                teacher: TeacherPart, root: Path, resume: bool, log: Log) -> None:
    """Scratch and every planned method for one seed; a method failing while training is marked failed."""
    data = load_data(recipe.model_copy(update={"seed": seed}))
    frozen = teacher.frozen(data)
    p = replace(plan_from_recipe(run_recipe(recipe, seed, root / "scratch" / f"seed{seed}", [{"name": "ce"}]),
                                 data=data), teacher=teacher)
    scratch = train_scratch(p, p.student, resume=resume, log=_tagged(log, "scratch", seed), inputs=p.student_inputs)
    _record(rows["scratch"], seed, scratch, data, p.student_inputs)
    for name, specs in plans.items():
        if rows[name].status != "ok":
            continue
        p = replace(plan_from_recipe(run_recipe(recipe, seed, root / name / f"seed{seed}", specs), data=data),
                    teacher=teacher)
        try:
            student = train_student(p, frozen, resume=resume, log=_tagged(log, name, seed))
        except DistillError as e:
            rows[name].status = f"failed: {_line(e)}"
            log(f"warning: {name} failed (seed {seed}): {_line(e)}")
            continue
        _record(rows[name], seed, student, data, p.student_inputs)


def _record(row: Row, seed: int, trained: Trained, data: DataSplits, inputs: Keys) -> None:
    """Test top-1 (last epoch / best-validation epoch) and mean seconds per epoch of one run."""
    main = [h for h in trained.history if h.get("stage", "main") == "main"] or None
    m = model_metrics(trained.model, data.test, data.test.y, num_classes=data.num_classes, history=main,
                      latency=False, inputs=inputs)
    row.last[seed], row.best[seed] = float(m["top1_last"]), float(m["top1_best"])
    secs = [float(h["seconds"]) for h in trained.history if isinstance(h.get("seconds"), (int, float))]
    if secs:
        row.seconds[seed] = statistics.fmean(secs)


def _tagged(log: Log, name: str, seed: int) -> Log:
    return lambda msg: log(f"[{name} seed{seed}] {msg}")


def _line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def format_command(recipe: str, overrides: Sequence[str], *, methods: str, seeds: int,
                   method_args: str | None = None, resume: bool = False, strategies: str | None = None) -> str:
    """The ``distill bench`` command line that reproduces a bench, shell-quoted."""
    which = ["--strategies", strategies] if strategies is not None else ["--methods", methods]
    argv = ["distill", "bench", recipe, *overrides, *which, "--seeds", str(seeds)]
    argv += ["--method-args", method_args] if method_args else []
    return shlex.join(argv + (["--resume"] if resume else []))


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
    t, s = recipe.teacher, recipe.student
    teacher = t.name if t else ", ".join(recipe.teachers or {}) or DASH
    lines = [f"# bench: {recipe.name}", "", "```bash", command, "```", "",
             f"Teacher `{teacher}` -> student `{s.name}` on `{recipe.data.name}`, seeds "
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

"""``distill bench``: many methods on one teacher/student pair over several seeds, in one table.

The teacher is trained (or loaded) once. For every seed the scratch student and one distilled student per
method are trained exactly as ``distill run`` would with that seed (same label subset, same steps, same initial
weights), each into ``<output_dir>/bench/<method>/seed<k>/``. Logit methods that carry their own
cross-entropy (kd, dkd, dist) are used alone; every other method is combined with ``ce`` (RepDistiller style).
"""

from __future__ import annotations

import shlex
import statistics
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from distill.bench_write import Row, write_bench
from distill.build import build_methods, check_classes, load_data
from distill.data import DataSplits, head
from distill.engine import setup_methods
from distill.errors import DistillError, first_line
from distill.evaluate import model_metrics
from distill.methods import METHODS
from distill.models import Keys
from distill.plan import TeacherPart, plan_from_recipe
from distill.pruned import teacher_trained_first
from distill.recipe import Recipe, recipe_from_dict
from distill.run import Trained, obtain_teacher, train_scratch, train_student
from distill.spec_check import check_kwargs
from distill.yaml_io import read_yaml

Log = Callable[[str], None]


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
    raw = read_yaml(file) or {}
    if not isinstance(raw, dict) or not all(isinstance(v, dict) or v is None for v in raw.values()):
        raise DistillError(f"--method-args {file}: expected a YAML mapping of method name -> arguments")
    # keys starting with "_" only hold YAML anchors shared by several methods
    args = {str(k): dict(v or {}) for k, v in raw.items() if not str(k).startswith("_")}
    for name, kwargs in args.items():
        cls = METHODS.get(name)
        weight = kwargs.get("weight", 1.0)
        if weight != "auto" and (isinstance(weight, bool) or not isinstance(weight, (int, float))):
            raise DistillError(f"{file}: {name}.weight: expected a number or 'auto' (got {weight!r})")
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
        if not spec.get("allow_negative"):
            spec.pop("allow_negative", None)  # the schema's default: runs keep the entries (and names) they had
        kwargs = {k: v for k, v in spec.items() if k not in ("name", "weight", "teacher", "allow_negative")}
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
    # a student pruned from a teacher trained here needs that teacher's weights before any plan is built
    recipe = teacher_trained_first(recipe, root, data, resume=resume, log=lambda m: log(f"[teacher] {m}"))
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
            rows[name].status = f"skipped: {first_line(e)}"
            log(f"warning: {name} skipped: {first_line(e)}")
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
            rows[name].status = f"failed: {first_line(e)}"
            log(f"warning: {name} failed (seed {seed}): {first_line(e)}")
            continue
        except Exception as e:  # a bug in one run must not cost the other methods' hours: shown, recorded, skipped
            rows[name].status = f"failed: internal error, a bug in distill: {type(e).__name__}: {first_line(e)}"
            log(f"warning: {name} failed (seed {seed}) with an internal error, a bug in distill; please report "
                f"it with this traceback:\n{traceback.format_exc().rstrip()}")
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


def format_command(recipe: str, overrides: Sequence[str], *, methods: str, seeds: int,
                   method_args: str | None = None, resume: bool = False, strategies: str | None = None) -> str:
    """The ``distill bench`` command line that reproduces a bench, shell-quoted."""
    which = ["--strategies", strategies] if strategies is not None else ["--methods", methods]
    argv = ["distill", "bench", recipe, *overrides, *which, "--seeds", str(seeds)]
    argv += ["--method-args", method_args] if method_args else []
    return shlex.join(argv + (["--resume"] if resume else []))

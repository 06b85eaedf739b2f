"""The run report: report.json (everything), report.md (human summary) and two PNG plots."""

from __future__ import annotations

import math
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

from distill.io import atomic_path, write_json, write_text
from distill.report_lm import is_lm, lm_summary, lm_table
from distill.report_robust import robustness_table

DASH = "—"
CURVES_PNG = "curves.png"
SCATTER_PNG = "accuracy_vs_params.png"


def collect_versions() -> dict[str, str]:
    """Versions of python, torch, numpy and distill ('unknown' when a package is not installed)."""
    versions = {"python": platform.python_version()}
    for name in ("torch", "numpy", "distill"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "unknown"
    return versions


def git_sha(cwd: str | Path = ".") -> str | None:
    """``git rev-parse HEAD`` in ``cwd``; None when git is missing, ``cwd`` is no repo, or anything fails."""
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    sha = done.stdout.strip()
    return sha if done.returncode == 0 and sha else None


def _clean(obj: Any) -> Any:
    """JSON-safe copy: NaN/Inf become None (strict JSON has no NaN), tensors/numpy scalars become numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _num(metrics: dict | None, key: str) -> float | None:
    value = (metrics or {}).get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _diff(a: float | None, b: float | None) -> float | None:
    return a - b if a is not None and b is not None else None


ROLES = {"teacher": "teacher", "scratch": "scratch", "student": "student"}


def summarize(models: dict[str, dict], roles: dict[str, str] | None = None) -> dict[str, float]:
    """Comparisons between 'teacher', 'scratch' and 'student' (``roles``: the rows playing those parts, e.g.
    ``{"scratch": "gen0", "student": "gen3"}`` for born-again); a key is present only when computable.

    gain_over_scratch / gain_over_scratch_best: student minus scratch top-1 (last / best epoch), as
    fractions; compression: teacher params / student params; speedup_b1 / speedup_b256: teacher latency /
    student latency; teacher_gap: teacher top1 minus student top1_last.
    """
    r = {**ROLES, **(roles or {})}
    t, sc, st = models.get(r["teacher"]), models.get(r["scratch"]), models.get(r["student"])
    summary = {
        "gain_over_scratch": _diff(_num(st, "top1_last"), _num(sc, "top1_last")),
        "gain_over_scratch_best": _diff(_num(st, "top1_best"), _num(sc, "top1_best")),
        "compression": _ratio(_num(t, "params"), _num(st, "params")),
        "speedup_b1": _ratio(_num(t, "latency_ms_b1"), _num(st, "latency_ms_b1")),
        "speedup_b256": _ratio(_num(t, "latency_ms_b256"), _num(st, "latency_ms_b256")),
        "teacher_gap": _diff(_num(t, "top1"), _num(st, "top1_last")),
        "ppl_ratio": _ratio(_num(st, "ppl"), _num(sc, "ppl")),
        "generation_speedup": _ratio(_num(st, "tokens_per_s"), _num(t, "tokens_per_s")),
    }
    return {k: v for k, v in summary.items() if v is not None}


def _pct(v: float | None) -> str:
    return DASH if v is None else f"{100 * v:.2f}%"


def _size(n: float | None) -> str:
    if n is None:
        return DASH
    if n < 1024:
        return f"{int(n)} B"
    return f"{n / 1024:.1f} KB" if n < 1024 ** 2 else f"{n / 1024 ** 2:.2f} MB"


def _fmt(v: float | None, spec: str) -> str:
    return DASH if v is None else format(v, spec)


def _row(role: str, m: dict) -> str:
    best = _pct(_num(m, "top1_best"))
    epoch = m.get("best_epoch")
    if epoch is not None and best != DASH:
        best += f" (ep {epoch})"
    params = _num(m, "params")
    cells = [role.replace("|", "\\|"), _fmt(params, ",.0f"), _size(_num(m, "size_bytes")),
             _pct(_num(m, "top1_last")), best, _pct(_num(m, "top5")), _pct(_num(m, "agreement")),
             _fmt(_num(m, "ece"), ".4f"), _fmt(_num(m, "latency_ms_b1"), ".2f"),
             _fmt(_num(m, "latency_ms_b256"), ".2f")]
    return "| " + " | ".join(cells) + " |"


def _summary_text(s: dict[str, float], models: dict[str, dict], roles: dict[str, str] | None = None) -> str:
    r = {**ROLES, **(roles or {})}
    named = "" if r == ROLES else f" ({r['student']} vs {r['scratch']})"
    parts = []
    if "gain_over_scratch" in s:
        # Signed wording: a student can lose to scratch, and the sentence must stay true then.
        parts.append(f"Student vs scratch{named}: {100 * s['gain_over_scratch']:+.2f} points top-1 (last epoch)")
        if "gain_over_scratch_best" in s:
            parts[-1] += f", {100 * s['gain_over_scratch_best']:+.2f} points at the best-validation epoch"
    if "teacher_gap" in s:
        parts.append(f"teacher minus student: {100 * s['teacher_gap']:+.2f} points top-1")
    if "compression" in s:
        parts.append(f"it is {s['compression']:.1f}x smaller than the teacher "
                     f"({_num(models[r['teacher']], 'params'):,.0f} vs {_num(models[r['student']], 'params'):,.0f} "
                     "parameters)")
    speed = [f"{s[k]:.1f}x at batch {b}" for k, b in (("speedup_b1", 1), ("speedup_b256", 256)) if k in s]
    if speed:
        parts.append("its speed-up over the teacher is " + " and ".join(speed))
    parts += lm_summary(s)
    if not parts:
        return "No teacher / scratch / student comparison is available for this run."
    text = "; ".join(parts) + "."
    return text[0].upper() + text[1:]


def _dec(value: float | None) -> str:
    return DASH if value is None else f"{value:.4f}"


def _markdown(report: dict) -> str:
    models = report["models"]
    lines = [f"# {report['title']}", ""]
    if is_lm(models):
        lines += lm_table(models, (_pct, _size, _fmt, _num))
    else:
        lines += ["| role | params | size | top-1 last | top-1 best (epoch) | top-5 | agreement w/ teacher | ECE "
                  "| latency b1 (ms) | latency b256 (ms) |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [_row(role, m) for role, m in models.items()]
    lines += ["", "## Summary", "", _summary_text(report["summary"], models, report.get("summary_roles")), ""]
    probed = {r: m for r, m in models.items() if m.get("knn_top1") is not None}
    if probed:
        lines += ["## Embedding probes", "", "Frozen features of each model (`eval.embeddings`): a 20-nearest-"
                  "neighbour (cosine) and a linear (logistic regression) classifier fitted on the training split's "
                  "true labels, scored on the test split. Evaluation only: no label is used to train. Against the "
                  "teacher's embeddings of the test split: the Spearman correlation of pairwise cosine similarities "
                  "(first 1,000 sentences) and the mean cosine (equal widths only).", "",
                  "| role | k-NN top-1 | linear probe top-1 | Spearman w/ teacher | cosine w/ teacher |",
                  "|---|---:|---:|---:|---:|"]
        lines += [f"| {r} | {_pct(m['knn_top1'])} | {_pct(m.get('probe_top1'))} | {_dec(m.get('spearman_teacher'))} "
                  f"| {_dec(m.get('cosine_teacher'))} |" for r, m in probed.items()]
        lines.append("")
    lines += robustness_table(models, _pct)
    if report["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    if report.get("deployment"):
        lines += _deployment_md(report["deployment"])
    lines += ["## Plots", "", f"![learning curves]({CURVES_PNG})", "",
              f"![top-1 vs parameters]({SCATTER_PNG})", "", "---", ""]
    versions = ", ".join(f"{k} {v}" for k, v in report["versions"].items())
    lines.append(f"seed {report['seed']} · {versions} · git {report['git_sha'] or DASH} · "
                 f"created {report['created']}")
    return "\n".join(lines) + "\n"


def _deployment_md(dep: dict) -> list[str]:
    """The "Deployment" section written by ``distill export``: one row per model file."""
    lines = ["## Deployment", "",
             f"Written by `distill export`. Top-1 and agreement with the fp32 student on the first {dep.get('n')} "
             f"test samples; median CPU forward time with {dep.get('threads')} thread(s).", "",
             "| model | format | file | size | top-1 | agreement w/ student | latency b1 (ms) | latency b256 (ms) |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in dep.get("rows", []):
        cells = [str(r.get("model")), str(r.get("format")) + (" int8" if r.get("int8") else ""),
                 f"`{r.get('file')}`", _size(_num(r, "size_bytes")), _pct(_num(r, "top1")),
                 _pct(_num(r, "agreement")), _fmt(_num(r, "latency_ms_b1"), ".3f"),
                 _fmt(_num(r, "latency_ms_b256"), ".3f")]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines + [""] + [f"- {n}" for n in dep.get("notes", [])] + ([""] if dep.get("notes") else [])


def write_deployment(out_dir: str | Path, deployment: dict) -> Path:
    """Set ``deployment`` in an existing report.json and rewrite it and report.md atomically; returns report.md."""
    import json

    from distill.errors import DistillError

    out = Path(out_dir)
    try:
        report = json.loads((out / "report.json").read_text())
        report["deployment"] = _clean(deployment)
        text = _markdown(report)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DistillError(f"{out / 'report.json'}: cannot add the deployment table ({type(e).__name__}: {e})"
                           ) from None
    write_json(out / "report.json", report)
    md = out / "report.md"
    write_text(md, text)
    return md


def save_figure(fig: Any, path: Path, dpi: int = 100) -> None:
    """Write a matplotlib Figure to ``path`` as PNG, atomically, and free it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)  # explicit format: the temp name ends in .tmp
    fig.clear()


def _plot_curves(path: Path, roles: list[str], histories: dict[str, list[dict]]) -> None:
    from matplotlib.figure import Figure  # Figure directly: no pyplot, no global backend state

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_acc, ax_loss = fig.subplots(1, 2)
    for i, role in enumerate(roles):
        hist = histories.get(role) or []
        acc = [(h["epoch"], 100 * h["val_top1"]) for h in hist if _num(h, "val_top1") is not None]
        loss = [(h["epoch"], h.get("loss", h.get("train_loss"))) for h in hist]
        loss = [(e, v) for e, v in loss if isinstance(v, (int, float)) and math.isfinite(v)]
        if acc:
            ax_acc.plot(*zip(*acc, strict=True), marker=".", color=f"C{i % 10}", label=role)
        if loss:
            ax_loss.plot(*zip(*loss, strict=True), marker=".", color=f"C{i % 10}", label=role)
    for ax, ylabel, title in ((ax_acc, "val top-1 (%)", "Validation top-1"),
                              (ax_loss, "train loss", "Training loss")):
        ax.set(xlabel="epoch", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    save_figure(fig, path)


def _plot_scatter(path: Path, models: dict[str, dict]) -> None:
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(6, 4.5), layout="constrained")
    ax = fig.subplots()
    for i, (role, m) in enumerate(models.items()):
        params, top1 = _num(m, "params"), _num(m, "top1_last")
        if params is None or top1 is None or params <= 0:
            continue  # log axis: nothing to place
        ax.scatter([params], [100 * top1], s=60, color=f"C{i % 10}")
        ax.annotate(role, (params, 100 * top1), textcoords="offset points", xytext=(6, 6))
    if ax.collections:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels (2x10^4, 3x10^4...) overlap
        ax.margins(x=0.2, y=0.15)  # room for the labels of the outermost points
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    ax.set(xlabel="parameters (log scale)", ylabel="test top-1, last epoch (%)", title="Accuracy vs size")
    ax.grid(alpha=0.3, which="both")
    save_figure(fig, path)


def write_report(out_dir: str | Path, *, models: dict[str, dict], histories: dict[str, list[dict]],
                 recipe: dict, seed: int, title: str = "distill report",
                 notes: list[str] | None = None, roles: dict[str, str] | None = None, figures: bool = True) -> Path:
    """Write report.json, report.md, curves.png and accuracy_vs_params.png (unless ``figures`` is False)
    atomically into ``out_dir``.

    ``models`` maps role (e.g. 'teacher', 'scratch', 'student'; order kept) to ``model_metrics`` output;
    ``histories`` maps role to per-epoch dicts ('epoch', 'val_top1', optional 'loss'). Non-finite numbers
    are stored as null in report.json. ``roles``: the rows the summary compares (see ``summarize``). Returns
    the path of report.md.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models, histories = _clean(models), _clean(histories)
    report = {
        "title": title,
        "models": models,
        "histories": histories,
        "recipe": _clean(recipe),
        "seed": seed,
        "versions": collect_versions(),
        "git_sha": git_sha(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "notes": list(notes or []),
        "summary": summarize(models, roles),
    }
    if roles:
        report["summary_roles"] = {**ROLES, **roles}
    roles = list(models) + [r for r in histories if r not in models]
    if figures:
        _plot_curves(out / CURVES_PNG, roles, histories)
        _plot_scatter(out / SCATTER_PNG, models)
    write_json(out / "report.json", report)
    md = out / "report.md"
    write_text(md, _markdown(report))
    return md

"""Pruning-initialised against random-initialised students of the same size, both distilled the same way.

For each pair, the student is the teacher pruned to a target parameter count (``student: {from_teacher: prune,
target_params: N}``, ``distill.models.prune``): ``init: pruned`` starts from the teacher's surviving weights,
``init: random`` is the same pruned structure with every weight drawn from the seed. Both train with the recipe's
method (kd), schedule and data for the same epochs, per seed (the seed draws the labelled samples, the batch order
and, for ``init: random``, the weights). Pairs:

* ``mnist1d``: ``recipes/mnist1d-resnet.yaml``, its resnet32 teacher (159,322 params) trained here once (``distill
  teacher``, seed 0) and loaded by every run (``teacher.weights``), pruned to 20,000 params; 20 epochs.
* ``mnist``: ``recipes/mnist-transfer-kd.yaml``, the pretrained ccexam CNN (421,642 params) pruned to 52,000
  (about 1/8); 5 epochs (the recipe's 10 halved to keep the default run near 12 minutes on a 2-core CPU).

Reads each run's ``report.json``; prints test top-1 after equal epochs (last epoch, and at the best-validation
epoch; mean ± std over seeds), the per-epoch mean curve, and the epochs the pruning-initialised student needs to
reach the random-initialised student's final top-1; writes the tables into docs/BENCHMARKS.md (section
``prune-init``). ``--scratch`` also trains each run's scratch row (labels alone: for ``init: pruned`` the pruned
teacher fine-tuned, "prune then fine-tune"), about doubling the time. ``--quick``: 1 epoch, 1 seed, a 2-epoch
teacher, nothing written (a smoke run).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/prune_init.py [--seeds 3] [--pairs mnist1d,mnist] [--scratch]
        [--out runs/prune-init] [--quick] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INITS = ("pruned", "random")
PAIRS = {
    "mnist1d": {"recipe": "recipes/mnist1d-resnet.yaml", "target": 20_000, "epochs": 20, "train_teacher": True,
                "what": "MNIST-1D, resnet32 teacher (trained here, seed 0) pruned to 20,000 params, 25 labels per "
                        "class"},
    "mnist": {"recipe": "recipes/mnist-transfer-kd.yaml", "target": 52_000, "epochs": 5, "train_teacher": False,
              "what": "MNIST, pretrained ccexam CNN pruned to 52,000 params, 100 labels per class"},
}


def distill(*args: str) -> None:
    """One ``distill`` command, its output shown."""
    cmd = [sys.executable, "-m", "distill.cli", *args]
    print("$", " ".join(["distill", *args]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def teacher_weights(pair: dict, out: Path, quick: bool) -> list[str]:
    """Overrides that load the pair's teacher: trained once here (skipped when already there) when the recipe
    trains it, else none (its own pretrained weights)."""
    if not pair["train_teacher"]:
        return []
    folder = out / "teacher-run"
    weights = folder / "teacher" / "model.safetensors"
    if not weights.is_file():
        distill("teacher", pair["recipe"], f"output_dir={folder}", *(["teacher.train.epochs=2"] if quick else []))
    return [f"teacher.weights={weights}"]


def run(pair: dict, out: Path, seed: int, init: str, epochs: int, scratch: bool, extra: list[str]) -> dict:
    """One distilled student (``init`` pruned or random); its report (the run is skipped when its report exists)."""
    report = out / f"{init}-seed{seed}" / "report.json"
    if not report.is_file():
        student = f"student={{from_teacher: prune, target_params: {pair['target']}, init: {init}}}"
        distill("run", pair["recipe"], f"seed={seed}", f"output_dir={report.parent}", student,
                f"train.epochs={epochs}", f"compare={str(scratch).lower()}", "eval.latency=false", *extra)
    return json.loads(report.read_text())


def ms(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    """'mean ± std' (sample std; 0 for one value)."""
    v = [x * scale for x in values]
    return f"{statistics.fmean(v):.{digits}f} ± {statistics.stdev(v) if len(v) > 1 else 0.0:.{digits}f}"


def curve(report: dict, role: str = "student") -> list[float]:
    """Test top-1 after each epoch of a role."""
    return [float(h["test_top1"]) for h in report["histories"][role]]


def epochs_to_reach(pruned: dict, random: dict) -> int | None:
    """The first epoch after which the pruning-initialised student's test top-1 is at least the random-initialised
    student's final test top-1 (same seed); None when it never is."""
    goal = curve(random)[-1]
    return next((e for e, acc in enumerate(curve(pruned), 1) if acc >= goal), None)


def pair_section(name: str, runs: dict[str, list[dict]]) -> str:
    """One pair's Markdown: the summary table, the reach line and the per-epoch curve."""
    first = runs["pruned"][0]
    params = first["models"]["student"]["params"]
    lines = [f"**{PAIRS[name]['what']}** (student {params:,} params, teacher "
             f"{first['models']['teacher']['params']:,}; teacher test top-1 "
             f"{100 * first['models']['teacher']['top1']:.2f}%)", "",
             "| student | seeds | top-1 last (%) | top-1 at best-val epoch (%) |", "|---|---:|---:|---:|"]
    rows = [(f"init: {init}, kd", [r["models"]["student"] for r in runs[init]]) for init in INITS]
    if "scratch" in first["models"]:
        rows += [(label, [r["models"]["scratch"] for r in runs[init]]) for init, label in
                 (("pruned", "init: pruned, labels only (prune, then fine-tune)"),
                  ("random", "init: random, labels only (scratch)"))]
    lines += [f"| {label} | {len(m)} | {ms([x['top1_last'] for x in m])} | {ms([x['top1_best'] for x in m])} |"
              for label, m in rows]
    reach = [epochs_to_reach(p, r) for p, r in zip(runs["pruned"], runs["random"])]
    epochs = len(curve(first))
    got = [e for e in reach if e is not None]
    mean = f"{statistics.fmean(got):.1f} of {epochs} on average" if got else "never"
    lines += ["", f"- Epochs the pruning-initialised student needs to reach the random-initialised student's final "
              f"top-1: {mean} (per seed: {', '.join('never' if e is None else str(e) for e in reach)}; reached by "
              f"{len(got)} of {len(reach)} seeds)."]
    shown = sorted({e for e in (1, 2, 3, 5, 10, 15, 20, epochs) if e <= epochs})
    lines += ["", "| epoch | " + " | ".join(str(e) for e in shown) + " |",
              "|---|" + "---:|" * len(shown)]
    for init in INITS:
        per_epoch = [[curve(r)[e - 1] for r in runs[init]] for e in shown]
        lines.append(f"| init: {init}, test top-1 (%) | " + " | ".join(f"{100 * statistics.fmean(v):.2f}"
                                                                      for v in per_epoch) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--pairs", default="mnist1d,mnist")
    p.add_argument("--scratch", action="store_true", help="also train each run's labels-only row")
    p.add_argument("--out", default="runs/prune-init")
    p.add_argument("--quick", action="store_true", help="smoke run: 1 epoch, 1 seed, 2-epoch teacher, no write")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    names = [n.strip() for n in a.pairs.split(",") if n.strip()]
    unknown = [n for n in names if n not in PAIRS]
    if unknown:
        p.error(f"unknown pair(s) {unknown}: choose from {', '.join(PAIRS)}")
    seeds = 1 if a.quick else a.seeds
    started, sections = time.perf_counter(), []
    for name in names:
        pair, out = PAIRS[name], ROOT / a.out / (f"quick-{name}" if a.quick else name)
        extra = teacher_weights(pair, out, a.quick)
        epochs = 1 if a.quick else pair["epochs"]
        runs = {init: [run(pair, out, s, init, epochs, a.scratch, extra) for s in range(seeds)] for init in INITS}
        sections.append(pair_section(name, runs))
    minutes = (time.perf_counter() - started) / 60
    command = ("OMP_NUM_THREADS=2 .venv/bin/python benchmarks/prune_init.py "
               f"--seeds {seeds} --pairs {','.join(names)}" + (" --scratch" if a.scratch else ""))
    # runs whose report already exists are read, not trained again: the wall time is this invocation's
    text = f"```bash\n{command}\n```\n\n" + "\n\n".join(sections) + f"\n\nWall time: {minutes:.1f} min."
    print(text)
    if not (a.no_write or a.quick):
        sys.path.insert(0, str(Path(__file__).parent))
        from docs_section import replace_section

        replace_section(ROOT / "docs" / "BENCHMARKS.md", "prune-init", text)


if __name__ == "__main__":
    main()

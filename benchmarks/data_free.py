"""Data-free distillation, measured: test top-1 (last and best epoch) and wall time, mean ± std over seeds.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/data_free.py --seeds 3

- MNIST: ``recipes/mnist-data-free.yaml`` (the pretrained ccexam CNN, no MNIST training image).
- MNIST-1D: ``recipes/mnist1d-data-free.yaml`` (a resnet32 teacher trained here, BatchNorm-statistics matching),
  the same without BN matching (``strategy.losses.bn=0``), and the same student distilled from the same teacher
  on the real training inputs (``strategy=offline``, KD at T=1 alone: no label used, as in the data-free runs).
  Needs the teacher: ``distill teacher recipes/mnist1d-resnet.yaml``.

Runs go to ``runs/data-free/<setting>/seed<k>/`` (a finished run is read back, not rerun; its recorded wall time
is kept in ``seconds.json``); prints a Markdown table for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from distill.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from label_free_embeddings import pm  # noqa: E402

ROOT = Path("runs/data-free")
SETTINGS = {
    "mnist": ("recipes/mnist-data-free.yaml", [],
              "MNIST, data-free (DAFL one-hot + entropy, smoothness prior, DFAD adversarial)"),
    "mnist1d-bn": ("recipes/mnist1d-data-free.yaml", [], "MNIST-1D, data-free with BN matching"),
    "mnist1d-nobn": ("recipes/mnist1d-data-free.yaml", ["strategy.losses.bn=0"],
                     "MNIST-1D, data-free without BN matching"),
    "mnist1d-real": ("recipes/mnist1d-data-free.yaml", ["strategy=offline", "cache=off"],
                     "MNIST-1D, same KD on the real training inputs (no labels)"),
}


def run(setting: str, seed: int) -> tuple[dict, float]:
    """The report's models and the run's wall time in seconds."""
    recipe, extra, _ = SETTINGS[setting]
    out = ROOT / setting / f"seed{seed}"
    timing = out / "seconds.json"
    if not (out / "report.json").is_file() or not timing.is_file():
        start = time.perf_counter()
        code = main(["run", recipe, *extra, f"seed={seed}", f"output_dir={out}"])
        if code != 0:
            raise SystemExit(f"{setting} seed {seed} failed (exit {code})")
        timing.write_text(json.dumps({"seconds": time.perf_counter() - start}))
    models = json.loads((out / "report.json").read_text())["models"]
    return models, json.loads(timing.read_text())["seconds"]


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    args = parser.parse_args()
    print("| setting | teacher top-1 (%) | student top-1, last epoch (%) | best epoch (%) | wall time (min) | seeds |")
    print("|---|---:|---:|---:|---:|---:|")
    for setting in args.settings.split(","):
        last, best, minutes, teacher = [], [], [], []
        for seed in range(args.seeds):
            models, seconds = run(setting, seed)
            last.append(models["student"]["top1_last"])
            best.append(models["student"]["top1_best"])
            teacher.append(models["teacher"]["top1"])
            minutes.append(seconds / 60)
        print(f"| {SETTINGS[setting][2]} | {100 * teacher[0]:.2f} | {pm(last)} | {pm(best)} | "
              f"{pm(minutes, 1.0, 1)} | {args.seeds} |", flush=True)


if __name__ == "__main__":
    main_()

"""Accuracy of KD from a top-k teacher cache against dense live-teacher KD, as a curve over k.

The demo pair (pretrained ccexam MNIST CNN -> 784-32-10 MLP) on a 10,000-image MNIST slice with 10 labels per
class (the rest is the transfer set), KD T=4, 10 epochs, seeds 0..S-1. ``live`` runs the teacher every step
(``cache: off``); ``k=N`` trains from a cache of the teacher's top-N logits plus their log-sum-exp
(``cache: {mode: required, k: N}``). Writes a table into docs/BENCHMARKS.md between the ``cache-accuracy``
markers.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cache_accuracy.py --seeds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

from distill.recipe import recipe_from_dict
from distill.run import run

sys.path.insert(0, str(Path(__file__).parent))
from docs_section import replace_section  # noqa: E402

ROOT = Path(__file__).parents[1]
VARIANTS: dict[str, dict] = {"live": {"mode": "off"}, **{f"k={k}": {"mode": "required", "k": k}
                                                            for k in (1, 2, 3, 5, "all")}}


def one_run(variant: str, seed: int, out: Path, epochs: int, samples: int) -> tuple[float, float]:
    raw = yaml.safe_load((ROOT / "recipes" / "mnist-transfer-kd.yaml").read_text())
    raw["data"].update(limit_train=samples, labels_per_class=10)
    raw.update(seed=seed, compare=False, output_dir=str(out / variant.replace("=", "") / f"seed{seed}"),
               eval={"latency": False}, cache={**VARIANTS[variant], "path": str(out / "cache" / variant)})
    raw["train"]["epochs"] = epochs
    report = run(recipe_from_dict(raw), log=lambda _: None)
    student = json.loads(Path(report).with_suffix(".json").read_text())["models"]["student"]
    return 100 * student["top1_last"], 100 * student["top1_best"]


def pm(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--out", default="runs/cache-accuracy")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    results = {v: [one_run(v, s, Path(args.out), args.epochs, args.samples) for s in range(args.seeds)]
               for v in VARIANTS}
    live = statistics.fmean(r[0] for r in results["live"])
    command = (f"OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cache_accuracy.py --seeds {args.seeds} "
               f"--epochs {args.epochs} --samples {args.samples}")
    lines = ["Command:", "", f"    {command}", "",
             "| teacher outputs | top-1 last (%) | top-1 at best-val epoch (%) | last minus live (points) |",
             "|---|---:|---:|---:|"]
    for v, rows in results.items():
        last = [r[0] for r in rows]
        lines.append(f"| {v} | {pm(last)} | {pm([r[1] for r in rows])} | {statistics.fmean(last) - live:+.2f} |")
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        replace_section(ROOT / "docs" / "BENCHMARKS.md", "cache-accuracy", text)


if __name__ == "__main__":
    main()

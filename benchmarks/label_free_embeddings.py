"""Label-free embedding distillation on MNIST: k-NN and linear-probe top-1 of the teacher's, a random student's
and the distilled student's embeddings, mean ± std over seeds, for each embedding method.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/label_free_embeddings.py --seeds 3 \
        --methods rkd,pkt,fitnet,fitnet-cosine

Runs ``recipes/mnist-label-free-embedding.yaml`` (no training label) once per method and seed into
``runs/label-free-embeddings/<method>/seed<k>/`` and prints a Markdown table (for docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from distill.cli import main

RECIPE = "recipes/mnist-label-free-embedding.yaml"
ROOT = Path("runs/label-free-embeddings")


def run(method: str, seed: int) -> dict:
    out = ROOT / method / f"seed{seed}"
    name, extra = method, []
    if method.startswith("fitnet"):
        name, extra = "fitnet", ["methods.0.pretrain_epochs=0"]
    if method == "fitnet-cosine":  # the cosine embedding loss: each sample's feature direction
        extra.append("methods.0.distance=cosine")
    entry = f'methods.0={{name: {name}, student_layers: ["fc:input"], teacher_layers: ["classifier.2:input"]}}'

    if not (out / "report.json").is_file():
        code = main(["run", RECIPE, entry, *extra, f"seed={seed}", f"output_dir={out}"])
        if code != 0:
            raise SystemExit(f"{method} seed {seed} failed (exit {code})")
    return json.loads((out / "report.json").read_text())["models"]


def pm(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` (sample std) of ``values`` times ``scale``."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--methods", default="rkd,pkt,fitnet")
    args = parser.parse_args()
    rows: dict[str, dict[str, list[float]]] = {}
    methods = args.methods.split(",")
    for method in methods:
        for seed in range(args.seeds):
            models = run(method, seed)
            # the teacher is one model; the random student's initial weights depend on the seed only
            recorded = (("teacher", "teacher (ccexam CNN)", method == methods[0] and seed == 0),
                        ("scratch", "random student (untrained)", method == methods[0]),
                        ("student", f"student, {method}", True))
            for role, label, keep in recorded:
                row = rows.setdefault(label, {"knn_top1": [], "probe_top1": []})
                if keep:
                    row["knn_top1"].append(models[role]["knn_top1"])
                    row["probe_top1"].append(models[role]["probe_top1"])
    print("| embeddings of | runs | k-NN top-1 (%) | linear probe top-1 (%) |")
    print("|---|---:|---:|---:|")
    for label, row in rows.items():
        print(f"| {label} | {len(row['knn_top1'])} | {pm(row['knn_top1'])} | {pm(row['probe_top1'])} |")


if __name__ == "__main__":
    main_()

"""Adversarial robustness of teacher, scratch and distilled student: clean, FGSM and PGD top-1, mean ± std over seeds.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/robustness.py --seeds 3 [--eps 0.1] [--steps 10] [--samples 1000]

- ``demo``: the demo recipe (``recipes/mnist-transfer-kd.yaml``, unchanged) with ``eval.robustness`` turned on
  by command-line overrides: the pretrained ccexam CNN, the 784-32-10 MLP from scratch on 1,000 labels, the same
  MLP distilled at T=4.
- ``defensive``: ``recipes/mnist-defensive.yaml``: defensive distillation (Papernot et al. 2016, method
  ``defensive``): a 784-256-256-10 MLP trained at T=100 on the teacher's soft labels alone, evaluated at T=1,
  against the same MLP trained on every label.

Every run uses the same attack settings (``--eps``, ``--steps``, ``--samples``: the first N test images, 0 for the
whole test split) and goes to ``runs/robustness/<setting>/seed<k>/``. A finished run evaluated with these settings
(``attack.json`` beside its report records them) is read back, not rerun; one evaluated with other settings is
evaluated again (``--resume``: its roles are loaded, not trained). Prints the table and writes it into
docs/BENCHMARKS.md (section ``robustness``) unless ``--no-write``.

``--quick`` is a smoke test: one epoch per role, 256 test images, ``runs/robustness-quick/``, nothing written.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
from label_free_embeddings import pm  # noqa: E402

SETTINGS = {
    "demo": ("recipes/mnist-transfer-kd.yaml", ["eval.latency=false"],
             "demo: ccexam CNN -> 784-32-10 MLP, KD T=4, 100 labels per class"),
    "defensive": ("recipes/mnist-defensive.yaml", [],
                  "defensive distillation: ccexam CNN -> 784-256-256-10 MLP at T=100, soft labels only"),
}
METRICS = ("robust_clean_top1", "fgsm_top1", "pgd_top1", "zero_grad_share")  # the table's columns, in order
ROLES = (("teacher", "teacher (ccexam CNN)"), ("scratch", "scratch student"), ("student", "distilled student"))
HEADING = ("## Adversarial robustness: the demo pair and defensive distillation (issue 17)\n\n"
           "White-box FGSM and PGD against each model itself (`eval.robustness`, `distill.robustness`): eps in "
           "pixels of [0, 1], inputs kept in [0, 1], cross-entropy on the true labels, the first test images. "
           "Defensive distillation works by gradient masking where it works at all (Carlini and Wagner 2016); "
           "these attacks do not rescale logits, so a saturated softmax shows as it is.\n")


def attack_overrides(a: argparse.Namespace) -> list[str]:
    """The ``eval.robustness`` overrides every run gets."""
    return [f"eval.robustness.eps={a.eps}", f"eval.robustness.steps={a.steps}",
            f"eval.robustness.samples={a.samples or 'null'}"]


def settings(a: argparse.Namespace) -> dict:
    """What a run's numbers depend on beyond its recipe and seed (kept beside its report in ``attack.json``)."""
    return {"eps": a.eps, "steps": a.steps, "samples": a.samples, "quick": a.quick}


def run(setting: str, seed: int, a: argparse.Namespace) -> dict:
    """The report's models of one setting and seed (trained, re-evaluated or read back)."""
    recipe, extra, _ = SETTINGS[setting]
    out = ROOT / a.out / setting / f"seed{seed}"
    report, record = out / "report.json", out / "attack.json"
    if report.is_file() and record.is_file() and json.loads(record.read_text()) == settings(a):
        models = json.loads(report.read_text())["models"]
        if all(k in m for m in models.values() for k in METRICS):  # else written before a metric existed
            return models
    cmd = [sys.executable, "-m", "distill.cli", "run", recipe, "--resume", f"seed={seed}", f"output_dir={out}",
           *extra, *attack_overrides(a), *(["train.epochs=1"] if a.quick else [])]
    print("$", " ".join(cmd[2:]), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    record.write_text(json.dumps(settings(a)))
    return json.loads(report.read_text())["models"]


def table(results: dict[str, list[dict]], a: argparse.Namespace) -> str:
    """Markdown: one row per setting and role, clean / FGSM / PGD top-1 and the zero-gradient share (%), mean ± std
    over seeds."""
    lines = [f"| setting | model | params | clean top-1 (%) | FGSM eps={a.eps:g} (%) | PGD-{a.steps} eps={a.eps:g} (%) "
             "| zero gradient (%) | seeds |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for setting, runs in results.items():
        for role, name in ROLES:
            rows = [r[role] for r in runs if role in r]
            if not rows:
                continue
            cells = [pm([m[k] for m in rows]) for k in METRICS]
            lines.append(f"| {SETTINGS[setting][2]} | {name} | {rows[0]['params']:,} | {' | '.join(cells)} "
                         f"| {len(rows)} |")
    n = next(iter(results.values()))[0]["student"]["robust_samples"]
    return "\n".join(lines + ["", f"- {n} test images; PGD steps of 2.5 * eps / {a.steps}, random start (seed = the "
                              "run's seed). Zero gradient: the share of those images whose input gradient is exactly "
                              "zero (a saturated softmax; FGSM cannot move them)."])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--settings", default=",".join(SETTINGS))
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--samples", type=int, default=1000, help="the first N test images (0: every one)")
    p.add_argument("--out", default="runs/robustness")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 epoch, 256 images, nothing written")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    if a.quick:
        a.samples, a.out, a.no_write = 256, "runs/robustness-quick", True
    results = {s: [run(s, seed, a) for seed in range(a.seeds)] for s in a.settings.split(",")}
    flags = "".join(f" --{k} {v}" for k, v in (("eps", a.eps), ("steps", a.steps), ("samples", a.samples)))
    flags += " --quick" * a.quick
    text = (f"```bash\nOMP_NUM_THREADS=2 .venv/bin/python benchmarks/robustness.py --seeds {a.seeds}{flags}\n```\n\n"
            + table(results, a))
    print(text)
    if not a.no_write:
        from docs_section import replace_section

        docs = ROOT / "docs" / "BENCHMARKS.md"
        if "<!-- robustness:begin -->" not in docs.read_text():
            docs.write_text(docs.read_text().rstrip() + "\n\n" + HEADING)
        replace_section(docs, "robustness", text)


if __name__ == "__main__":
    main()

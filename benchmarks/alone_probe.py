"""What a distillation term alone teaches a student: train the student with the term and nothing else (no
cross-entropy), then fit a linear probe (and a k-NN classifier: ``distill.probe.probes``) on the input of its
classifier (the last ``nn.Linear``) over the training split and test it on the test split. Against the same
probes on the untrained student (the initial weights) and on the student trained with cross-entropy alone: a
term whose probe ends below the untrained student's removes class information this student's classifier could
use, so adding it to the cross-entropy works against it
(issue 13: the methods more than a point below scratch on a pair).

    .venv/bin/python benchmarks/alone_probe.py recipes/mnist-cnn-gap.yaml --methods sp,hkd,ofd,rkd \
        --out runs/alone-b --section alone-probe-b

Each method runs at its defaults (``methods=[{name: m}]``), seed 0, the recipe's schedule; extra ``KEY=VALUE``
overrides go to every run. Prints the table; with ``--section`` also writes it into docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from docs_section import replace_section  # noqa: E402

from distill.plan import plan_from_recipe  # noqa: E402
from distill.probe import probes  # noqa: E402
from distill.recipe import load_recipe  # noqa: E402
from distill.taps import last_linear  # noqa: E402

CLI = str(Path(sys.executable).parent / "distill")


def train_alone(recipe: str, method: str, out: Path, overrides: list[str]) -> Path:
    """``distill run`` with ``method`` as the only term; returns the student's weights file."""
    weights = out / method / "student" / "model.safetensors"
    if not weights.is_file():
        subprocess.run([CLI, "run", recipe, f"output_dir={out / method}", "compare=false", "eval.latency=false",
                        f"methods=[{{name: {method}}}]", *overrides], check=True, stdout=subprocess.DEVNULL)
    return weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("recipe")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--methods", required=True, help="comma-separated method names")
    ap.add_argument("--out", required=True, help="folder for the runs (reused when the weights exist)")
    ap.add_argument("--section", help="docs/BENCHMARKS.md section to write (default: print only)")
    args = ap.parse_args()
    out = Path(args.out)
    plan = plan_from_recipe(load_recipe(args.recipe, [f"output_dir={out / 'probe'}", *args.overrides]))
    rows = []
    for name in ["untrained", "ce", *args.methods.split(",")]:
        student = plan.fresh_student(plan.seed)
        if name != "untrained":
            student.load_state_dict(load_file(train_alone(args.recipe, name, out, args.overrides)))
        got = probes(student, f"{last_linear(student)}:input", plan.data, inputs=plan.student_inputs)
        rows.append((name, got["probe_top1"], got["knn_top1"]))
        print(f"{name}: linear probe {100 * got['probe_top1']:.2f}%, k-NN {100 * got['knn_top1']:.2f}%", flush=True)
    base = rows[0][1]
    section = ["--section", args.section] if args.section else []
    cmd = " ".join(["OMP_NUM_THREADS=1 .venv/bin/python benchmarks/alone_probe.py", args.recipe, *args.overrides,
                    f"--methods {args.methods} --out {args.out}", *section])
    lines = [f"Command: `{cmd}` (seed 0).", "", "| student trained with | linear probe on the classifier's input, "
             "test top-1 (%) | vs untrained | k-NN (k 20), test top-1 (%) |", "|---|---:|---:|---:|"]
    lines += [f"| {n if n != 'untrained' else 'nothing (initial weights)'} | {100 * t:.2f} | "
              f"{'—' if n == 'untrained' else f'{100 * (t - base):+.2f}'} | {100 * k:.2f} |" for n, t, k in rows]
    text = "\n".join(lines)
    if args.section:
        replace_section(Path(__file__).parent.parent / "docs" / "BENCHMARKS.md", args.section, text)
    print(text)


if __name__ == "__main__":
    main()

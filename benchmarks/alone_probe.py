"""What a distillation term alone teaches a student: train the student with the term and nothing else (no
cross-entropy), then fit a linear probe on the input of its classifier (the last ``nn.Linear``) over the labelled
training split and test it on the test split. Against the same probe on the untrained student (the initial
weights) and on the student trained with cross-entropy alone: a term whose probe ends below the untrained
student's removes class information this student's classifier could use, so adding it to the cross-entropy
works against it (issue 13: the methods more than a point below scratch on a pair).

    .venv/bin/python benchmarks/alone_probe.py recipes/mnist-cnn-gap.yaml --methods sp,hkd,ofd,rkd \
        --out runs/alone-gap --section alone-probe-b

Each method runs at its defaults (``methods=[{name: m}]``), seed 0, the recipe's schedule; extra ``KEY=VALUE``
overrides go to every run. Prints the table; with ``--section`` also writes it into docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
from docs_section import replace_section  # noqa: E402

from distill.plan import plan_from_recipe  # noqa: E402
from distill.recipe import load_recipe  # noqa: E402
from distill.taps import FeatureTaps, last_linear  # noqa: E402
from distill.types import UNLABELLED  # noqa: E402

CLI = str(Path(sys.executable).parent / "distill")


def train_alone(recipe: str, method: str, out: Path, overrides: list[str]) -> Path:
    """``distill run`` with ``method`` as the only term; returns the student's weights file."""
    weights = out / method / "student" / "model.safetensors"
    if not weights.is_file():
        subprocess.run([CLI, "run", recipe, f"output_dir={out / method}", "compare=false", "eval.latency=false",
                        f"methods=[{{name: {method}}}]", *overrides], check=True, stdout=subprocess.DEVNULL)
    return weights


def classifier_input(model: torch.nn.Module, x: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """(N, ...) inputs -> (N, D) features entering the model's last linear layer, in eval mode."""
    tap = f"{last_linear(model)}:input"
    model.eval()
    out = []
    with torch.no_grad(), FeatureTaps(model, [tap]) as taps:
        for i in range(0, len(x), batch):
            model(x[i:i + batch])
            out.append(taps.feats[tap].flatten(1).clone())
    return torch.cat(out)


def linear_probe(f_train: torch.Tensor, y_train: torch.Tensor, f_test: torch.Tensor, y_test: torch.Tensor,
                 num_classes: int) -> float:
    """Multinomial logistic regression (L-BFGS, L2 1e-3) on standardised features -> test top-1."""
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    a, b = (f_train - mu) / sd, (f_test - mu) / sd
    w = torch.zeros(a.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(a @ w + bias, y_train) + 1e-3 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return ((b @ w + bias).argmax(1) == y_test).float().mean().item()


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
    keep = plan.data.train.y != UNLABELLED  # the labelled training samples
    x_tr, y_tr = plan.data.train.x[keep], plan.data.train.y[keep]
    x_te, y_te = plan.data.test.x, plan.data.test.y
    rows = []
    for name in ["untrained", "ce", *args.methods.split(",")]:
        student = plan.fresh_student(plan.seed)
        if name != "untrained":
            student.load_state_dict(load_file(train_alone(args.recipe, name, out, args.overrides)))
        top1 = linear_probe(classifier_input(student, x_tr), y_tr, classifier_input(student, x_te), y_te,
                            plan.data.num_classes)
        rows.append((name, top1))
        print(f"{name}: {100 * top1:.2f}%", flush=True)
    base = rows[0][1]
    section = ["--section", args.section] if args.section else []
    cmd = " ".join(["OMP_NUM_THREADS=1 .venv/bin/python benchmarks/alone_probe.py", args.recipe, *args.overrides,
                    f"--methods {args.methods} --out {args.out}", *section])
    lines = [f"Command: `{cmd}` (seed 0).", "", "| student trained with | linear probe on the classifier's input, "
             "test top-1 (%) | vs untrained |", "|---|---:|---:|"]
    lines += [f"| {n if n != 'untrained' else 'nothing (initial weights)'} | {100 * t:.2f} | "
              f"{'—' if n == 'untrained' else f'{100 * (t - base):+.2f}'} |" for n, t in rows]
    text = "\n".join(lines)
    if args.section:
        replace_section(Path(__file__).parent.parent / "docs" / "BENCHMARKS.md", args.section, text)
    print(text)


if __name__ == "__main__":
    main()

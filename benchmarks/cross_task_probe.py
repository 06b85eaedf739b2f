"""Why the digits 0-4 teacher cannot lift the cross-task student above plain transfer learning (issue 11):
how well each source network's features serve digits 5-9, frozen (a linear probe on the penultimate embedding)
and fine-tuned (every weight, a new 5-way head, at three learning rates), with L labels per class.

Needs the source runs of ``distill run recipes/mnist-source-0to4.yaml`` (teacher and student architecture trained
on digits 0-4). Prints one table (mean ± std over 3 label draws); run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cross_task_probe.py
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import Tensor, nn

from distill.data.builtin import mnist
from distill.io import load_weights
from distill.models.base import build_model

SOURCES = {"teacher (27,877 params)": ("runs/mnist-source-0to4/teacher/model.safetensors", [32, 64], 128),
           "student architecture (7,285)": ("runs/mnist-source-0to4/scratch/model.safetensors", [16, 32], 64)}
STEPS, BATCH = 390, 128  # the cross-task recipes' 10 epochs of ~4,900 images at batch 128


def target_split(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    keep = y >= 5  # digits 5-9 as classes 0-4
    return (x[keep] - 0.1307) / 0.3081, y[keep] - 5


def source_model(path: str, channels: list[int], hidden: int) -> nn.Module:
    model = build_model("cnn", num_classes=5, input_shape=(1, 28, 28), channels=channels, hidden=hidden)
    body = {k: v for k, v in load_weights(path).items() if not k.startswith("fc.")}  # a new head
    model.load_state_dict(body, strict=False)
    return model


def embed(model: nn.Module, x: Tensor) -> np.ndarray:
    seen: dict[str, Tensor] = {}
    hook = model.fc.register_forward_hook(lambda m, i, o: seen.__setitem__("e", i[0]))
    model.eval()
    with torch.no_grad():
        model(x)
    hook.remove()
    return seen["e"].numpy()  # (N, hidden)


def draw(y: Tensor, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.choice(np.flatnonzero(y.numpy() == c), per_class, replace=False) for c in range(5)])


def finetune(model: nn.Module, x: Tensor, y: Tensor, lr: float, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, STEPS)
    model.train()
    for _ in range(STEPS):
        b = torch.randint(0, len(x), (BATCH,))
        loss = nn.functional.cross_entropy(model(x[b]), y[b])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model


def accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return 100 * (model(x).argmax(1) == y).float().mean().item()


def cell(values: list[float]) -> str:
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def main() -> None:
    raw = mnist(seed=0)
    xtr, ytr = target_split(raw.train.x[:10000], raw.train.y[:10000])  # the recipes' 10,000-image slice
    xte, yte = target_split(raw.test.x, raw.test.y)
    print("| source network | labels per class | linear probe (%) | fine-tuned, lr 0.05 (%) | lr 0.01 (%) "
          "| lr 0.002 (%) |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, spec in SOURCES.items():
        for per_class in (5, 20):
            probe, tuned = [], {lr: [] for lr in (0.05, 0.01, 0.002)}
            for seed in range(3):
                idx = draw(ytr, per_class, seed)
                frozen = source_model(*spec)
                clf = LogisticRegression(max_iter=2000).fit(embed(frozen, xtr[idx]), ytr[idx].numpy())
                probe.append(100 * clf.score(embed(frozen, xte), yte.numpy()))
                for lr in tuned:
                    tuned[lr].append(accuracy(finetune(source_model(*spec), xtr[idx], ytr[idx], lr, seed), xte, yte))
            print(f"| {name} | {per_class} | {cell(probe)} | " + " | ".join(cell(v) for v in tuned.values()) + " |",
                  flush=True)


if __name__ == "__main__":
    main()

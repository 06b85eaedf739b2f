"""After a data-free run: the student's and the generator's weights in their own folders, and what the
generator makes (a grid of samples per class as the teacher labels them, and the class histogram)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from distill.engine.dist import on_main
from distill.io import save_weights, write_json
from distill.report import save_figure

if TYPE_CHECKING:
    from distill.plan import Plan
    from distill.strategies.synthesis import Synthesis

PER_CLASS = 8  # columns of the sample grid
SAMPLES = 1000  # generated samples behind the histogram


def save_parts(plan: Plan, synth: Synthesis, latent: int, width: int) -> dict[str, Path]:
    """``student/model.safetensors`` and ``generator/model.safetensors`` (with ``generator/generator.json``:
    what rebuilds it, ``distill.strategies.generator.build_generator(shape, latent, width, seed)``)."""
    paths = {"student": plan.out / "student" / "model.safetensors",
             "generator": plan.out / "generator" / "model.safetensors"}
    shape = plan.data.shape_for(plan.student_inputs)

    def write() -> None:
        save_weights(paths["student"], synth.student.state_dict())
        save_weights(paths["generator"], synth.generator.state_dict())
        write_json(paths["generator"].parent / "generator.json",
                   {"shape": list(shape or ()), "latent": latent, "width": width, "seed": plan.seed})
    on_main(write)
    return paths


@torch.no_grad()
def generate(synth: Synthesis, n: int, latent: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` generated inputs (n, *shape) from fixed codes (generator in eval mode) and the teacher's classes (n,)."""
    was = synth.generator.training
    synth.generator.eval()
    try:
        device = next(synth.generator.parameters()).device
        z = torch.randn(n, latent, generator=torch.Generator().manual_seed(seed)).to(device)
        x = synth.generate(z)
        return x.cpu(), synth.teacher(x).argmax(dim=1).cpu()
    finally:
        synth.generator.train(was)


def show_samples(plan: Plan, synth: Synthesis, latent: int) -> list[str]:
    """Write ``data_free/samples.png``, ``data_free/classes.png`` and ``data_free/classes.json``; returns the
    report's notes (with the figures)."""
    x, pred = generate(synth, SAMPLES, latent, plan.seed)
    counts = torch.bincount(pred, minlength=plan.data.num_classes).tolist()
    names = list(plan.data.class_names or [str(c) for c in range(plan.data.num_classes)])
    out = plan.out / "data_free"
    on_main(partial(_write, out, x, pred, counts, names))
    empty = sum(c == 0 for c in counts)
    return [f"generated samples, {PER_CLASS} per class as the teacher labels them: ![samples](data_free/samples.png)",
            f"teacher's classes on {SAMPLES} generated samples ({empty} of {len(counts)} classes never predicted): "
            "![classes](data_free/classes.png)"]


def _write(out: Path, x: Tensor, pred: Tensor, counts: list[int], names: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "classes.json", dict(zip(names, counts, strict=True)))
    _grid(out / "samples.png", x, pred, names)
    _histogram(out / "classes.png", counts, names)


def _grid(path: Path, x: Tensor, pred: Tensor, names: list[str]) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    rows = len(names)
    fig = Figure(figsize=(PER_CLASS * 0.9, rows * 0.9), layout="constrained")
    axes = fig.subplots(rows, PER_CLASS, squeeze=False)
    for c, name in enumerate(names):
        picked = x[pred == c][:PER_CLASS]
        for j, ax in enumerate(axes[c]):
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(name, rotation=0, ha="right", va="center")
            if j < len(picked):
                _draw(ax, picked[j])
    save_figure(fig, path, dpi=80)


def _draw(ax: object, sample: Tensor) -> None:
    """An image (C, H, W) scaled to [0, 1] per sample, or a signal (C, L) / (L,) as lines."""
    if sample.ndim == 3:
        img = (sample - sample.min()) / (sample.max() - sample.min()).clamp_min(1e-8)
        ax.imshow((img[0] if img.shape[0] != 3 else img.permute(1, 2, 0)).numpy(), cmap="gray")  # type: ignore[attr-defined]
    else:
        for channel in sample.reshape(-1, sample.shape[-1]):
            ax.plot(channel.numpy(), linewidth=0.8)  # type: ignore[attr-defined]


def _histogram(path: Path, counts: list[int], names: list[str]) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 0.5 * len(names)), 3), layout="constrained")
    ax = fig.subplots()
    ax.bar(range(len(counts)), counts)
    ax.set_xticks(range(len(names)), names, rotation=90 if len(names) > 20 else 0)
    ax.set(xlabel="teacher's class", ylabel=f"of {sum(counts)} generated samples",
           title="Teacher's predictions on generated samples")
    save_figure(fig, path, dpi=80)

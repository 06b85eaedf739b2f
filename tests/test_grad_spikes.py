"""Step gradient norms in every run's log, and the warning when a few steps dwarf the rest (the failure of
relation terms such as PKT on the ccexam teacher: docs/BENCHMARKS.md, issue 13); the warning (and report note)
when validation accuracy sits at chance for several epochs (DKD on LeNet-5, pair (f))."""

from __future__ import annotations

from pathlib import Path

import torch

import distill
from distill.engine.meter import SPIKE_RATIO, chance_spans, warn_collapse, warn_spikes
from user_parts import TinyNet, digits_arrays

QUIET = {"latency": False, "compare": False, "log": lambda _: None}


def _fit(tmp: Path, grad_clip: float | None) -> distill.FitResult:
    x, y = digits_arrays()
    torch.manual_seed(0)
    training = {"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}, "grad_clip": grad_clip}
    return distill.fit(student=TinyNet(), train=(x[:600], y[:600]), val=(x[600:800], y[600:800]),
                       test=(x[800:1000], y[800:1000]), methods=["ce"], training=training, batch_size=64,
                       output_dir=tmp, **QUIET)


def test_log_records_the_step_gradient_norms_with_or_without_clipping(tmp_path: Path) -> None:
    free = _fit(tmp_path / "free", None).history
    # a clip that never binds leaves training unchanged, and the norm it reports is the one measured without it
    loose = _fit(tmp_path / "loose", 1.0e9).history
    for a, b in zip(free, loose, strict=True):
        assert 0 < a["grad_norm_median"] <= a["grad_norm_max"]
        assert a["grad_norm_median"] == b["grad_norm_median"] and a["grad_norm_max"] == b["grad_norm_max"]
    header = (tmp_path / "free" / "student" / "log.csv").read_text().splitlines()[0].split(",")
    assert {"grad_norm_median", "grad_norm_max"} <= set(header)
    # a binding clip still logs the norm before clipping: the first step, from the same start, is unchanged
    tight = _fit(tmp_path / "tight", 1.0e-3).history
    assert tight[0]["grad_norm_max"] > 1.0e-3


def _said(stats: dict, grad_clip: float | None = None) -> list[str]:
    lines: list[str] = []
    warn_spikes("student", grad_clip, stats, lines.append)
    return lines


def test_spike_warning_names_the_ratio_and_the_fix() -> None:
    spiky = {"epoch": 1, "grad_norm_median": 1.11, "grad_norm_max": 94.5}  # ce + pkt on the ccexam teacher
    (line,) = _said(spiky)
    assert "85x" in line and "train.grad_clip" in line and "2.2" in line
    calm = {"epoch": 1, "grad_norm_median": 0.227, "grad_norm_max": 0.227 * (SPIKE_RATIO - 1)}
    assert _said(calm) == []
    assert _said(spiky, grad_clip=2.0) == []  # already clipped: nothing to advise
    assert _said({**spiky, "epoch": 2}) == []  # late epochs: a small median makes any hard batch look like one
    assert _said({"epoch": 1}) == []  # AMP with scaled gradients: no norms measured


def _collapse(accs: list[float], classes: int = 10, stages: list[str] | None = None) -> list[str]:
    history = [{"epoch": i + 1, "stage": (stages or ["main"] * len(accs))[i], "val_top1": a}
               for i, a in enumerate(accs)]
    lines: list[str] = []
    for n in range(1, len(history) + 1):  # as the loop calls it: after every epoch, on the history so far
        warn_collapse("student", history[:n], classes, lines.append)
    return lines


def test_collapse_warning_names_the_streak_once_and_the_fix() -> None:
    # dkd on LeNet-5 (pair (f), seed 1): above chance for 7 epochs, then stuck at 10% for the rest of the run
    (line,) = _collapse([0.10, 0.20, 0.18, 0.17, 0.23, 0.21, 0.19, 0.16, 0.10, 0.10, 0.10, 0.10, 0.10])
    assert "at chance (10.00% for 10 classes)" in line and "best so far 23.00% at epoch 5" in line
    assert "train.grad_clip" in line and "weight: auto" in line
    assert chance_spans([{"epoch": i + 1, "stage": "main", "val_top1": 0.1} for i in range(4)], 10) == [(1, 4)]
    (never,) = _collapse([0.089, 0.089, 0.089])  # ce + at on the same pair: chance from the first epoch
    assert "never above it" in never
    # two streaks, two warnings; one or two epochs at chance, none
    assert len(_collapse([0.1, 0.1, 0.1, 0.5, 0.1, 0.1, 0.1])) == 2
    assert _collapse([0.12, 0.14, 0.6, 0.1, 0.1, 0.8]) == []
    # the bar is 5% of the way from chance to 100%: 52.5% for two classes, so 55% is learning, 51% is not
    assert _collapse([0.55] * 4, classes=2) == [] and len(_collapse([0.51] * 4, classes=2)) == 1
    # a pre-training stage trains no head (FitNet's hints): its chance-level epochs do not count
    assert _collapse([0.1] * 4, stages=["pretrain"] * 4) == []
    assert len(_collapse([0.1] * 5, stages=["pretrain"] * 2 + ["main"] * 3)) == 1


def test_a_collapsed_run_says_so_in_its_log(tmp_path: Path) -> None:
    x, y = digits_arrays()
    torch.manual_seed(0)
    lines: list[str] = []
    training = {"epochs": 4, "optimizer": {"name": "sgd", "lr": 50.0, "momentum": 0.9}}  # blows every unit up
    distill.fit(student=TinyNet(), train=(x[:600], y[:600]), val=(x[600:800], y[600:800]), methods=["ce"],
                training=training, batch_size=64, output_dir=tmp_path, latency=False, compare=False,
                log=lines.append)
    assert sum("has likely collapsed" in line for line in lines) == 1
    assert "validation top-1 at chance (1/10) in epochs 1-4" in (tmp_path / "report.md").read_text()

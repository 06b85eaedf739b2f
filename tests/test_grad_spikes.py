"""Step gradient norms in every run's log, and the warning when a few steps dwarf the rest (the failure of
relation terms such as PKT on the ccexam teacher: docs/BENCHMARKS.md, issue 13)."""

from __future__ import annotations

from pathlib import Path

import torch

import distill
from distill.engine.meter import SPIKE_RATIO, warn_spikes
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

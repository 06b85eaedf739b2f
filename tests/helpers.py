"""Shared helpers for CLI and integration tests: tiny recipes written to a temporary folder."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from distill.cli import main


def digits_recipe(tmp: Path, **changes: object) -> dict:
    """A seconds-long digits recipe (teacher trained here, KD into a small MLP)."""
    raw: dict = {
        "name": "t", "seed": 0, "output_dir": str(tmp / "out"),
        "data": {"name": "digits", "labels_per_class": 10, "batch_size": 64},
        "teacher": {"name": "mlp", "hidden": [64], "train": {"epochs": 3, "optimizer": {"name": "adam", "lr": 0.003}}},
        "student": {"name": "mlp", "hidden": [16]},
        "method": {"name": "kd", "T": 4, "alpha": 0.5, "beta": 0.5},
        "train": {"epochs": 2, "optimizer": {"name": "adam", "lr": 0.003}},
        "eval": {"latency": False},
    }
    raw.update(changes)
    return raw


def write_recipe(tmp: Path, raw: dict, name: str = "recipe.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(raw))
    return path


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def tiny_convnet() -> torch.nn.Module:
    """An importable user model for 1x8x8 inputs and 10 classes (for the ``external`` model tests)."""
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 10))

"""Training options of the loop: bf16 autocast on CPU, channels_last, and fp16's CUDA requirement."""

from __future__ import annotations

import csv
from pathlib import Path

import torch

from helpers import cli, digits_recipe, write_recipe

CNN = {"name": "cnn", "channels": [4, 8], "hidden": 16}


def test_bf16_channels_last_run_tracks_the_fp32_run(tmp_path: Path, capsys) -> None:
    losses = {}
    for name, extra in (("fp32", {}), ("bf16", {"precision": "bf16", "channels_last": True})):
        raw = digits_recipe(tmp_path / name, student=CNN, compare=False)
        raw["train"].update(epochs=3, **extra)
        code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw, f"{name}.yaml")))
        assert code == 0, err
        with open(tmp_path / name / "out" / "student" / "log.csv") as f:
            losses[name] = [float(row["loss"]) for row in csv.DictReader(f)]
    assert len(losses["bf16"]) == 3 and losses["bf16"][-1] < losses["bf16"][0]  # it trains
    for a, b in zip(losses["bf16"], losses["fp32"]):  # bf16 forward, fp32 losses: the same curve within 2%
        assert abs(a - b) < 0.02 * b


def test_bf16_autocast_changes_the_forward_but_not_the_loss_precision(tmp_path: Path) -> None:
    from distill.build import build_methods
    from distill.engine.loop import FitJob, _Step, as_fp32
    from distill.recipe import recipe_from_dict
    from distill.types import ModelOutput

    raw = digits_recipe(tmp_path)
    raw["train"]["precision"] = "bf16"
    recipe = recipe_from_dict(raw)
    model = torch.nn.Linear(8, 3)
    job = FitJob(model=model, methods=build_methods(recipe), loader=None, train=recipe.train, out_dir=tmp_path,
                 seed=0, fingerprint="x")
    step = _Step(job)
    with step.autocast():
        logits = model(torch.randn(4, 8))
    assert logits.dtype == torch.bfloat16
    assert as_fp32(ModelOutput(logits, {"f": logits})).logits.dtype == torch.float32


def test_fp16_on_cpu_is_one_clear_error(tmp_path: Path, capsys) -> None:
    raw = digits_recipe(tmp_path, compare=False)
    raw["train"]["precision"] = "fp16"
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw)))
    assert code == 2 and err.count("\n") == 1 and "fp16 needs a CUDA device" in err

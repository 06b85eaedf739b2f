"""Streamed data: an image folder read lazily by DataLoader workers trains exactly like the same images in
memory, resumes bit-identically after kill -9, and keeps its order a function of (seed, epoch)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from distill.data import BatchLoader, StreamDataset, build_data
from distill.io import load_weights
from helpers import cli, killed_then_resumed, write_recipe


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sklearn's 1,797 digits as 8x8 grey PNGs in class folders (what users have on disk)."""
    root = tmp_path_factory.mktemp("pngs")
    x, y = load_digits(return_X_y=True)
    for i, (img, label) in enumerate(zip(x, y)):
        (root / str(label)).mkdir(exist_ok=True)
        Image.fromarray((img.reshape(8, 8) * 255 / 16).astype(np.uint8), mode="L").save(root / str(label) / f"{i}.png")
    return root


def _recipe(tmp: Path, root: Path, **data: object) -> dict:
    return {"name": "s", "output_dir": str(tmp / "out"), "compare": False, "eval": {"latency": False},
            "data": {"name": "folder", "root": str(root), "channels": 1, "labels_per_class": 20, "batch_size": 16,
                     **data},
            "teacher": {"name": "mlp", "hidden": [64], "train": {"epochs": 2, "optimizer": {"name": "adam",
                                                                                             "lr": 0.003}}},
            "student": {"name": "cnn", "channels": [4, 8]}, "method": {"name": "kd"},
            "train": {"epochs": 4, "optimizer": {"name": "adam", "lr": 0.003}}}


def test_folder_is_streamed_by_default_and_matches_in_memory(digit_pngs: Path) -> None:
    lazy = build_data("folder", root=str(digit_pngs), channels=1)
    eager = build_data("folder", root=str(digit_pngs), channels=1, in_memory=True)
    assert isinstance(lazy.train, StreamDataset) and not isinstance(eager.train, StreamDataset)
    assert lazy.mean == eager.mean and lazy.std == eager.std and torch.equal(lazy.train.y, eager.train.y)
    a = BatchLoader(lazy.train, 50, shuffle=True, seed=3)
    b = BatchLoader(eager.train, 50, shuffle=True, seed=3)
    for epoch in (0, 5):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for x, y in zip(a, b):
            assert torch.equal(x.index, y.index) and torch.equal(x.input, y.input)


def test_streamed_and_in_memory_runs_give_identical_weights(tmp_path: Path, capsys, digit_pngs: Path) -> None:
    for mode, in_memory in (("lazy", False), ("eager", True)):
        raw = _recipe(tmp_path / mode, digit_pngs, in_memory=in_memory)
        raw["train"]["epochs"] = 1
        code, out, err = cli(capsys, "run", str(write_recipe(tmp_path, raw, f"{mode}.yaml")))
        assert code == 0, err
        assert ("input (1, 8, 8), streamed" in out) == (not in_memory)
    for role in ("teacher", "student"):
        a = load_weights(tmp_path / "lazy" / "out" / role / "model.safetensors")
        b = load_weights(tmp_path / "eager" / "out" / role / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), role


def test_sigkill_then_resume_on_a_streamed_dataset_is_bit_identical(tmp_path: Path, digit_pngs: Path) -> None:
    full = write_recipe(tmp_path, _recipe(tmp_path / "a", digit_pngs), "a.yaml")
    killed = write_recipe(tmp_path, _recipe(tmp_path / "b", digit_pngs), "b.yaml")
    killed_then_resumed(full, killed, tmp_path / "a" / "out", tmp_path / "b" / "out")


def test_two_ranks_on_a_streamed_folder_give_the_weights_of_one_process(tmp_path: Path, capsys,
                                                                         digit_pngs: Path) -> None:
    raw = _recipe(tmp_path / "one", digit_pngs, workers=1)
    raw["student"] = {"name": "mlp", "hidden": [16]}  # no BatchNorm: ranks keep their own statistics
    # a label budget (20 per class): the ranks' chunks hold different numbers of labels, and each rank's
    # cross-entropy must still divide by its share of the global batch's labels (Batch.labelled_count)
    raw["train"]["epochs"] = 1
    code, _, err = cli(capsys, "run", str(write_recipe(tmp_path, raw, "one.yaml")))
    assert code == 0, err
    entry = Path(__file__).with_name("ddp_entry.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(entry), "run",
           str(tmp_path / "one.yaml"), f"output_dir={tmp_path / 'two'}"]
    two = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    for role in ("teacher", "student"):
        a = load_weights(tmp_path / "one" / "out" / role / "model.safetensors")
        b = load_weights(tmp_path / "two" / role / "model.safetensors")
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert diff < 1e-5, (role, diff)  # as tests/test_ddp.py: float summation order only
